//! `mien train` and `mien eval`: their flags, the recipe they make, and the runs.

use super::{expression_weights, is_stdout, model_config, tta_name, write_json, Progress};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mien::augment::{AugmentConfig, EraseFill, Tta};
use mien::data::{self, Dataset, Usage};
use mien::kernels::conv2d::Precision;
use mien::nn::weights::Part;
use mien::nn::{Backend, Ensemble, Model};
use mien::train::{self, OptimizerChoice, Recipe, RunFiles, SgdSettings};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RecipeChoice {
    /// SGD 0.01 with Nesterov momentum 0.9 and weight decay 5e-4, 3 warm-up epochs then a
    /// cosine to 0 over 100 epochs; random crops to the model's input, flips, rotation 10, zoom
    /// 0.1, random erasing 0.5; validation with mirror images. For data/models/vgg.json.
    Default,
    /// Adam 1e-3 on a cosine down to 0 over 40 epochs, label smoothing 0.1, light augmentation
    /// (rotation 5, zoom 0.05, shifts 0.05, flips), validation with mirror images (trained the
    /// shipped weights of the original model).
    Adam,
    /// An earlier default: Adam 1e-3 with reduce-on-plateau, no smoothing, rotation 10, zoom and
    /// shifts 0.1, flips (trained the first shipped weights).
    Plateau,
    /// The original report: Adam 1e-4, rotation 30, shear 0.3, zoom 0.3, flips, 30 epochs.
    Original,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerKind {
    /// Adam with Keras' defaults.
    Adam,
    /// SGD with Nesterov momentum and weight decay, as PyTorch's.
    Sgd,
}

#[derive(Args)]
pub(super) struct TrainArgs {
    /// FER2013: a folder with train/ and test/ class folders, or fer2013.csv.
    #[arg(long, default_value_os_t = data::default_fer_dir())]
    data: PathBuf,
    /// Model: a config file (JSON), or the name of a shipped one in data/models (vgg, original,
    /// vgg_bn).
    #[arg(long, default_value = "vgg")]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = RecipeChoice::Default)]
    recipe: RecipeChoice,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// The update rule (default: the recipe's).
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD's momentum, in [0, 1) (default: the recipe's, or 0.9).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// SGD with plain momentum instead of Nesterov's.
    #[arg(long)]
    no_nesterov: bool,
    /// SGD's L2 weight decay, on every trainable tensor (default: the recipe's, or 5e-4).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Early-stopping patience in epochs on validation accuracy (0: off).
    #[arg(long)]
    patience: Option<usize>,
    /// Learning-rate schedule (default: the recipe's).
    #[arg(long, value_enum)]
    schedule: Option<mien::train::Schedule>,
    /// Epochs of linear learning-rate warm-up before the cosine schedule (default: the
    /// recipe's).
    #[arg(long, value_name = "EPOCHS")]
    warmup: Option<usize>,
    /// Label smoothing of the training loss, in [0, 1) (default: the recipe's).
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Distil from these weights (several, separated by commas, are an ensemble): each
    /// training image's target mixes the labels with the teachers' mean probabilities of it
    /// and its mirror image, computed once before the first epoch.
    #[arg(long, value_name = "WEIGHTS", value_delimiter = ',')]
    teacher: Vec<PathBuf>,
    /// With --teacher: the weight in (0, 1] of the teachers' probabilities in the target.
    #[arg(long, value_name = "WEIGHT", requires = "teacher")]
    distill: Option<f32>,
    /// Weight classes by inverse frequency.
    #[arg(long)]
    class_weights: bool,
    /// Train on the images (their centre crops, for a smaller model input) as they are (the
    /// flags below are still checked).
    #[arg(long)]
    no_augment: bool,
    /// Random rotation range in degrees (default: the recipe's).
    #[arg(long)]
    rotation: Option<f32>,
    /// Random shear range in degrees (default: the recipe's).
    #[arg(long)]
    shear: Option<f32>,
    /// Random zoom range as a fraction: factors in [1 - z, 1 + z] (default: the recipe's).
    #[arg(long)]
    zoom: Option<f32>,
    /// Random width and height shift as a fraction of the model's input side (default: the
    /// recipe's).
    #[arg(long)]
    shift: Option<f32>,
    /// No random horizontal flips.
    #[arg(long)]
    no_flip: bool,
    /// Random erasing: the probability in [0, 1] that a rectangle of 2-33 % of each training
    /// image is filled with --erase-fill (0: off, the recipes' choice).
    #[arg(long, value_name = "P")]
    erase: Option<f32>,
    /// What random erasing fills with: one random grey per image, or black.
    #[arg(long, value_enum)]
    erase_fill: Option<EraseFill>,
    /// Validate on the images alone, not the mean of each and its mirror image.
    #[arg(long)]
    no_mirror: bool,
    /// Validate on this fraction of the training images instead of the test split.
    #[arg(long)]
    val_split: Option<f64>,
    /// Use only the first N training images (and N/4 validation images): quick checks.
    #[arg(long)]
    subset: Option<usize>,
    /// Run folder for checkpoints, metrics and plots.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run saved in --out.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start from these weights (of the same model) instead of random ones, with a fresh
    /// optimizer and schedule: to fine-tune, or to give a finished run another cycle of its
    /// schedule (a warm restart).
    #[arg(long, value_name = "WEIGHTS", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Start a new run in --out even if it holds one, removing that run's checkpoints.
    #[arg(long)]
    overwrite: bool,
    /// Skip unreadable images and bad CSV rows with a warning instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Args)]
pub(super) struct EvalArgs {
    /// A folder of class folders (such as FER2013's test/), or fer2013.csv with --usage.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Usage::PublicTest)]
    usage: Usage,
    /// Weights: safetensors files, or names of those shipped in data/models (vgg, original,
    /// ...); default: the shipped ensemble. Several, separated by commas, are an ensemble: each
    /// image gets the mean of their probabilities.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<PathBuf>,
    /// Model config; default: the one recorded in each weights file.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Test-time augmentation: classify each image by the mean probabilities of these views of
    /// it (mirror: twice the work, and more accurate on the FER2013 test split for both shipped
    /// models: see data/models/README.md).
    #[arg(long, value_enum, default_value_t = Tta::Mirror)]
    tta: Tta,
    /// Write the results as JSON to this file, or to standard output with `-` or no value.
    #[arg(long, num_args = 0..=1, default_missing_value = "-", value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the confusion matrix and the reliability diagram as DIR/confusion.png and
    /// DIR/reliability.png.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Write every image's logits, in loading order (class folders in class order, files
    /// sorted by name), as a JSON array: for comparing with other frameworks.
    #[arg(long)]
    logits: Option<PathBuf>,
    #[arg(long)]
    skip_bad: bool,
}

fn load_data(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset> {
    let start = std::time::Instant::now();
    let data = data::load(path, usage, skip_bad)?;
    report_loaded(path, &data, start);
    eprintln!("{}: {} images, per class {:?}", path.display(), data.len(), data.class_counts());
    Ok(data)
}

/// The warnings and skipped inputs of a load, each once.
fn report_loaded(path: &Path, data: &Dataset, start: std::time::Instant) {
    for warning in &data.warnings {
        eprintln!("warning: {warning}");
    }
    for skipped in &data.skipped {
        eprintln!("warning: skipped {skipped}");
    }
    eprintln!("{}: read in {:.1} s{}", path.display(), start.elapsed().as_secs_f64(), if data.skipped.is_empty() { String::new() } else { format!(", {} bad inputs skipped", data.skipped.len()) });
}

/// Train and validation sets: from a folder (train/ and test/) or a CSV (Training and
/// PublicTest rows), or with --val-split a part of the training images.
fn train_val(args: &TrainArgs) -> Result<(Dataset, Dataset)> {
    let start = std::time::Instant::now();
    let (mut train, val) = data::load_train_val(&args.data, args.skip_bad)?;
    report_loaded(&args.data, &train, start);
    let mut val = match args.val_split {
        Some(f) => train.split_off(f, 7),
        None => val,
    };
    if let Some(n) = args.subset {
        // Spread the subset over all classes: the folders are in class order.
        let pick = |d: &Dataset, n: usize| {
            let step = (d.len() / n.max(1)).max(1);
            let idx: Vec<usize> = (0..d.len()).step_by(step).take(n).collect();
            Dataset { images: idx.iter().flat_map(|&i| d.image(i).to_vec()).collect(), labels: idx.iter().map(|&i| d.labels[i]).collect(), ..Default::default() }
        };
        train = pick(&train, n);
        val = pick(&val, (n / 4).max(1));
    }
    eprintln!("training on {} images, validating on {}: per class {:?} and {:?}", train.len(), val.len(), train.class_counts(), val.class_counts());
    Ok((train, val))
}

/// The recipe the flags ask for, refused when it would make a meaningless run.
pub(super) fn recipe_of(args: &TrainArgs) -> Result<Recipe> {
    let mut recipe = match args.recipe {
        RecipeChoice::Default => Recipe::default_recipe(),
        RecipeChoice::Adam => Recipe::adam_recipe(),
        RecipeChoice::Plateau => Recipe::plateau_recipe(),
        RecipeChoice::Original => Recipe::original(),
    };
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.batch = args.batch.unwrap_or(recipe.batch);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    recipe.patience = args.patience.unwrap_or(recipe.patience);
    recipe.class_weights |= args.class_weights;
    recipe.mirror_eval &= !args.no_mirror;
    recipe.optimizer = optimizer_of(args, recipe.optimizer)?;
    recipe.schedule = args.schedule.unwrap_or(recipe.schedule);
    recipe.warmup_epochs = args.warmup.unwrap_or(recipe.warmup_epochs);
    recipe.label_smoothing = args.label_smoothing.unwrap_or(recipe.label_smoothing);
    recipe.teachers = args.teacher.iter().map(|path| path.display().to_string()).collect();
    if !recipe.teachers.is_empty() {
        recipe.distill = args.distill.unwrap_or(DEFAULT_DISTILL);
    }
    let augment = &mut recipe.augment;
    augment.rotation_deg = args.rotation.unwrap_or(augment.rotation_deg);
    augment.shear_deg = args.shear.unwrap_or(augment.shear_deg);
    augment.zoom = args.zoom.unwrap_or(augment.zoom);
    augment.shift = args.shift.unwrap_or(augment.shift);
    augment.horizontal_flip &= !args.no_flip;
    augment.erase_probability = args.erase.unwrap_or(augment.erase_probability);
    augment.erase_fill = args.erase_fill.unwrap_or(augment.erase_fill);
    recipe.validate()?;
    if args.no_augment {
        recipe.augment = AugmentConfig::NONE;
    }
    if args.subset == Some(0) {
        bail!("--subset 0 leaves no images to train on");
    }
    if let Some(f) = args.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
        bail!("--val-split {f} must be above 0 and below 1");
    }
    Ok(recipe)
}

/// The recipe's optimizer as the flags change it. SGD's flags on Adam are refused rather
/// than ignored.
fn optimizer_of(args: &TrainArgs, recipe: OptimizerChoice) -> Result<OptimizerChoice> {
    let sgd = match (args.optimizer, recipe) {
        (Some(OptimizerKind::Adam), _) | (None, OptimizerChoice::Adam) => {
            if args.momentum.is_some() || args.weight_decay.is_some() || args.no_nesterov {
                bail!("--momentum, --weight-decay and --no-nesterov set SGD; add --optimizer sgd");
            }
            return Ok(OptimizerChoice::Adam);
        }
        (_, OptimizerChoice::Sgd(sgd)) => sgd,
        (Some(OptimizerKind::Sgd), OptimizerChoice::Adam) => SgdSettings::default(),
    };
    Ok(OptimizerChoice::Sgd(SgdSettings { momentum: args.momentum.unwrap_or(sgd.momentum), nesterov: sgd.nesterov && !args.no_nesterov, weight_decay: args.weight_decay.unwrap_or(sgd.weight_decay) }))
}

/// `train::evaluate` with a progress bar, taken off the terminal when it ends.
fn evaluate_with_progress<B: Backend>(models: &mut [Model<B>], backend: &B, data: &Dataset, batch: usize, tta: Tta) -> Result<train::Evaluation> {
    let mut progress = Progress { bar: None };
    let eval = train::evaluate_observed(models, backend, data, batch, tta, &mut progress);
    progress.clear();
    Ok(eval?)
}

/// The teachers' weight in the target when --teacher is given without --distill: labels and
/// teachers in equal parts.
const DEFAULT_DISTILL: f32 = 0.5;

/// Every training image's mean probabilities (with its mirror image) under `teachers`.
fn teacher_probabilities<B: Backend>(backend: &B, mut teachers: Ensemble<B>, train_set: &Dataset) -> Result<Vec<f32>> {
    println!("classifying the {} training images with the teachers ...", train_set.len());
    let eval = evaluate_with_progress(teachers.models_mut(), backend, train_set, 64, Tta::Mirror)?;
    println!("the teachers: {:.2} % of the training images right, mirror-averaged", 100.0 * eval.accuracy);
    Ok(eval.probs.concat())
}

/// Models for inference from `weights` (an ensemble if several), each file's own model or
/// `config`'s.
fn inference_models<B: Backend>(backend: &B, weights: &[PathBuf], config: Option<&Path>, precision: Precision) -> Result<Ensemble<B>> {
    let mut models = Vec::new();
    for weights in weights {
        let config = match config {
            Some(path) => model_config(path)?,
            None => mien::nn::weights::config_of(weights)?,
        };
        let mut model = Model::new(backend, config, 0)?;
        let bytes = std::fs::read(weights).with_context(|| format!("{}: cannot read the weights", weights.display()))?;
        model.load_for_inference(backend, &bytes, weights)?;
        model.precision = precision;
        models.push(model);
    }
    Ok(Ensemble::new(models)?)
}

pub(super) fn run_train<B: Backend>(backend: &B, args: &TrainArgs, recipe: &Recipe) -> Result<()> {
    let config = model_config(&args.model)?;
    let recipe = recipe.clone();
    let mut model = Model::new(backend, config, recipe.seed)?;
    // Weights that do not fit the model are refused before the data is read or --out made.
    if let Some(init) = &args.init {
        model.load(backend, init, Part::Value)?;
        println!("starting from the weights in {}", init.display());
    }
    // Teachers multiply in f32 whatever --precision says, so that a resumed run gets the same
    // targets on any CPU; their weights are checked before the data is read.
    let teachers = if args.teacher.is_empty() { None } else { Some(inference_models(backend, &args.teacher, None, Precision::F32)?) };
    let (mut train_set, val_set) = train_val(args)?;
    data::check_trainable(&train_set, &val_set)?;
    let files = RunFiles { dir: args.out.clone() };
    let start = match (args.resume, args.overwrite) {
        (true, _) => train::Start::Resume,
        (false, true) => train::Start::Overwrite,
        (false, false) => train::Start::New,
    };
    // The run folder is checked (and locked) before the teachers' minutes-long pass, so that a
    // wrong start is refused at once.
    let run = train::Run::open(&mut model, backend, &train_set, &val_set, &recipe, &files, start)?;
    if let Some(teachers) = teachers {
        let probs = match run.saved_teacher_probabilities(&train_set)? {
            Some(probs) => {
                println!("the teachers' probabilities of the training images: read back from {}", files.teacher_probabilities().display());
                probs
            }
            None => {
                let probs = teacher_probabilities(backend, teachers, &train_set)?;
                run.save_teacher_probabilities(&probs)?;
                probs
            }
        };
        train_set.set_teacher(probs)?;
    }
    let splits = [("train", train_set.class_counts().to_vec()), ("validation", val_set.class_counts().to_vec())];
    mien::plot::class_distribution(&args.out.join("class_distribution.png"), &data::CLASSES, &splits)?;
    println!("model {}: {} parameters; training on {}", model.config.name, model.parameter_count(), backend.describe());
    let state = run.train(&mut model, backend, &train_set, &val_set, &mut Progress { bar: None })?;
    if let Some(why) = &state.stopped {
        println!("{why}");
    }
    // The model now holds the best weights: their confusion matrix on the validation set.
    let eval = train::evaluate(std::slice::from_mut(&mut model), backend, &val_set, recipe.batch, recipe.validation_tta())?;
    mien::plot::confusion_matrix(&args.out.join("confusion.png"), &data::CLASSES, &eval.confusion)?;
    println!("best validation accuracy {:.2}% at epoch {}; weights in {}; plots and metrics in {}", 100.0 * state.best_accuracy, state.best_epoch, files.best().display(), args.out.display());
    Ok(())
}

pub(super) fn run_eval<B: Backend>(backend: &B, args: &EvalArgs, precision: Precision) -> Result<()> {
    let mut models = inference_models(backend, &expression_weights(&args.weights), args.model.as_deref(), precision)?;
    let path = args.data.clone().unwrap_or_else(|| data::default_fer_dir().join("test"));
    let data = load_data(&path, args.usage, args.skip_bad)?;
    let eval = evaluate_with_progress(models.models_mut(), backend, &data, args.batch, args.tta)?;
    if let Some(path) = &args.logits {
        std::fs::write(path, serde_json::to_string(&eval.logits)?).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        mien::plot::confusion_matrix(&dir.join("confusion.png"), &data::CLASSES, &eval.confusion)?;
        mien::plot::reliability_diagram(&dir.join("reliability.png"), &eval.reliability)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &eval)?;
        if is_stdout(path) {
            return Ok(());
        }
    }
    let views = match eval.tta {
        Tta::None => String::new(),
        tta => format!(" with --tta {} ({:.2}% on single images)", tta_name(tta), 100.0 * eval.single_accuracy),
    };
    println!("{} images: accuracy {:.2}%{views}, loss {:.4} ({})", eval.images, 100.0 * eval.accuracy, eval.loss, backend.describe());
    println!("expected calibration error (15 bins): {:.2}%", 100.0 * eval.ece);
    println!("{:<10} {:>9} {:>7} {:>6} {:>8}", "class", "precision", "recall", "f1", "support");
    for c in &eval.per_class {
        println!("{:<10} {:>9.3} {:>7.3} {:>6.3} {:>8}", c.class, c.precision, c.recall, c.f1, c.support);
    }
    println!("confusion (rows: true, columns: predicted, order {}):", data::CLASSES.join(" "));
    for row in &eval.confusion {
        println!("  {}", row.iter().map(|v| format!("{v:>5}")).collect::<String>());
    }
    Ok(())
}
