# Sourced by the test scripts: apt_install WHY PACKAGE... installs the Debian packages as root,
# or, as another user, says how to install them and returns 1 (the caller decides whether that
# is fatal).
apt_install() {
  local why=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* ($why)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "$why needs: sudo apt-get install $*" >&2
    return 1
  fi
}
