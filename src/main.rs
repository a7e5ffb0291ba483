mod cli;

fn main() -> std::process::ExitCode {
    // Mesa's software drivers print "XDG_RUNTIME_DIR is invalid or not set" for every adapter
    // they probe when it is missing (CI, containers, sudo); give them a private one. Done
    // before any thread starts, as setting the environment requires.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| !std::path::Path::new(&d).is_dir()) {
        let dir = std::env::temp_dir().join("mien-runtime");
        if std::fs::create_dir_all(&dir).is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
    // A closed stdout (`mien devices | head -1`) ends the process the way it ends other Unix
    // tools, rather than as a panic inside println!.
    #[cfg(unix)]
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
