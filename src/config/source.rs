//! The sources of the configuration and their order: the `-dev` preset, `-config-dir`
//! files in lexical order, `-config-file`s, the flags, then `-hcl` fragments. Each source
//! is parsed on its own into a [`Layer`] (HCL by way of the JSON it stands for).

use std::fmt;
use std::path::{Path, PathBuf};

use super::hcl::Lines;
use super::problem::{Origin, Problem, Problems, problem};
use super::raw::RawConfig;

/// A parsed source.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Where it came from.
    pub origin: Origin,
    /// What it says.
    pub raw: RawConfig,
    /// The line of each key, for sources whose format tells it (HCL).
    pub lines: Lines,
}

impl Layer {
    /// A layer without line information.
    pub fn new(origin: Origin, raw: RawConfig) -> Layer {
        Layer {
            origin,
            raw,
            lines: Lines::default(),
        }
    }
}

/// A config file format. Consul's rule: a file's extension tells it (`.json`, `.hcl`),
/// unless `-config-format` names one for every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// HCL, as Consul reads it ([`hcl`]).
    Hcl,
}

impl Format {
    /// Parses a `-config-format` value, with Consul's error.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text {
            "json" => Ok(Format::Json),
            "hcl" => Ok(Format::Hcl),
            _ => Err("-config-format must be either 'hcl' or 'json'".into()),
        }
    }

    /// The format of the file at `path`: `forced` if given, else by the end of its name
    /// (`.json`, `.hcl`, case-sensitive as in Consul); `None` means Consul skips the
    /// file (see [`skipped_warning`]).
    pub fn of(path: &Path, forced: Option<Format>) -> Option<Format> {
        forced.or_else(|| {
            let name = path.file_name()?.to_str()?;
            if name.ends_with(".json") {
                Some(Format::Json)
            } else if name.ends_with(".hcl") {
                Some(Format::Hcl)
            } else {
                None
            }
        })
    }
}

/// Consul's warning for a config file it does not read (kept verbatim: users and log
/// watchers match on it).
pub fn skipped_warning(path: &Path) -> String {
    format!(
        "skipping file {}, extension must be .hcl or .json, or config format must be set",
        path.display()
    )
}

/// Where the configuration is read from, kept for reloads.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `-dev`.
    pub dev: bool,
    /// `-config-dir`s.
    pub dirs: Vec<PathBuf>,
    /// `-config-file`s.
    pub files: Vec<PathBuf>,
    /// Command-line flags as a layer.
    pub flags: RawConfig,
    /// `-config-format`: the format of every file, whatever its extension.
    pub format: Option<Format>,
    /// `-hcl` fragments, applied after the flags (as Consul does).
    pub hcl: Vec<String>,
}

/// Reads one config file in `format`.
pub fn read_file(path: &Path, format: Format) -> Result<Layer, Problem> {
    let origin = Origin::File(path.to_owned());
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(Some(&origin), "", format!("cannot read: {e}")))?;
    parse(origin, &text, format)
}

/// Parses one source in `format`, naming the key (and, for HCL, the line) of the first
/// problem.
pub fn parse(origin: Origin, text: &str, format: Format) -> Result<Layer, Problem> {
    match format {
        Format::Json => parse_layer(origin, text),
        Format::Hcl => {
            let (value, lines) = super::hcl::to_json(text).map_err(|e| Problem {
                origin: Some(origin.clone()),
                key: e.key,
                line: e.line,
                message: e.message,
            })?;
            let raw = deserialize(value, &origin, &lines)?;
            Ok(Layer { origin, raw, lines })
        }
    }
}

/// Parses one JSON source, naming the key of the first problem.
pub fn parse_layer(origin: Origin, text: &str) -> Result<Layer, Problem> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let lines = Lines::default();
    let raw = deserialize(de, &origin, &lines)?;
    Ok(Layer { origin, raw, lines })
}

/// The one typed path every format takes into [`RawConfig`].
fn deserialize<'de, D>(de: D, origin: &Origin, lines: &Lines) -> Result<RawConfig, Problem>
where
    D: serde::Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let mut p = problem(Some(origin), &key, e.into_inner().to_string());
        p.line = lines.find(&key);
        p
    })
}

/// The files of a config directory in lexical order (not recursive), each with its
/// format; `None` for a file Consul skips with [`skipped_warning`].
pub fn dir_files(
    dir: &Path,
    forced: Option<Format>,
) -> Result<Vec<(PathBuf, Option<Format>)>, Problem> {
    let origin = Origin::File(dir.to_owned());
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(Some(&origin), "", format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| {
            let format = Format::of(&p, forced);
            (p, format)
        })
        .collect())
}

/// The `-dev` preset.
pub(super) fn dev_layer() -> RawConfig {
    RawConfig {
        server: Some(true),
        bootstrap: Some(true),
        bind_addr: Some("127.0.0.1".into()),
        client_addr: Some("127.0.0.1".into()),
        log_level: Some("debug".into()),
        ..RawConfig::default()
    }
}

/// The sources read: their layers in Consul's order, and what was passed over.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The layers.
    pub layers: Vec<Layer>,
    /// Warnings for the operator (Consul's text), such as files skipped for their
    /// extension.
    pub warnings: Vec<String>,
}

/// Reads every source in Consul's order.
pub fn load_layers(sources: &Sources) -> Result<Loaded, Problems> {
    let mut layers = Vec::new();
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    if sources.dev {
        layers.push(Layer::new(Origin::Defaults, dev_layer()));
    }
    let mut paths = Vec::new();
    for dir in &sources.dirs {
        match dir_files(dir, sources.format) {
            Ok(files) => paths.extend(files),
            Err(p) => problems.push(p),
        }
    }
    paths.extend(
        sources
            .files
            .iter()
            .map(|f| (f.clone(), Format::of(f, sources.format))),
    );
    for (path, format) in paths {
        let Some(format) = format else {
            warnings.push(skipped_warning(&path));
            continue;
        };
        match read_file(&path, format) {
            Ok(layer) => layers.push(layer),
            Err(p) => problems.push(p),
        }
    }
    layers.push(Layer::new(Origin::Flags, sources.flags.clone()));
    for (i, text) in sources.hcl.iter().enumerate() {
        match parse(Origin::Fragment(i), text, Format::Hcl) {
            Ok(layer) => layers.push(layer),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(Loaded { layers, warnings })
    } else {
        Err(Problems(problems))
    }
}
