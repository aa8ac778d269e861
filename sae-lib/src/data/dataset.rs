//! Text datasets: a Hub dataset's files (the tutorial's `NeelNanda/pile-10k`, split `train`:
//! its parquet files, else its `.jsonl` or `.txt` ones), or local `.parquet`, `.jsonl` and
//! `.txt` files and directories of them.
//!
//! Documents are streamed file by file, so a dataset larger than memory can be collected.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::hub::{HubOptions, HubRepo, RepoKind};
use crate::{Error, Result};

/// How a `.txt` file is cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxtSplit {
    /// Paragraphs separated by one or more blank lines are documents.
    #[default]
    BlankLines,
    /// Each file is one document.
    WholeFile,
}

/// How to read a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetOptions {
    /// Column of a parquet file (or field of a JSON line) holding the text.
    pub column: String,
    /// Hub split, matched against the file names (`train`); all files when none matches.
    pub split: String,
    /// How `.txt` files are cut into documents.
    pub txt_split: TxtSplit,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            column: "text".into(),
            split: "train".into(),
            txt_split: TxtSplit::BlankLines,
        }
    }
}

/// Where the documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// A Hub dataset repository, e.g. `NeelNanda/pile-10k`.
    Hub(HubRepo),
    /// A local file or directory.
    Path(PathBuf),
}

impl DatasetSource {
    /// An existing path, or one that looks like a path, is local; anything else a Hub id.
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if path.exists() || spec.starts_with(['/', '.', '~']) {
            DatasetSource::Path(path.to_path_buf())
        } else {
            DatasetSource::Hub(HubRepo::parse(spec, RepoKind::Dataset))
        }
    }

    /// A name for metadata that [`DatasetSource::parse`] reads back: the repo id (with its
    /// `@revision` unless that is `main`, as for the Hub's parquet conversion), or the local
    /// path made absolute (see [`crate::io::absolute`]).
    pub fn name(&self) -> String {
        match self {
            DatasetSource::Hub(r) if r.revision != "main" => format!("{}@{}", r.id, r.revision),
            DatasetSource::Hub(r) => r.id.clone(),
            DatasetSource::Path(p) => crate::io::absolute(p),
        }
    }

    /// The files to read, in a fixed order. A Hub dataset's are fetched only when reached,
    /// so that reading its first documents does not download all of a large one.
    pub fn files(&self, opts: &DatasetOptions, hub: &HubOptions) -> Result<Vec<DataFile>> {
        match self {
            DatasetSource::Hub(repo) => {
                let format_of = |f: &str| EXTENSIONS.iter().position(|e| has_extension(f, e));
                let files = repo.list_files(hub)?;
                // One format, the first of parquet, jsonl, txt the repository holds: a dataset
                // often keeps the same text in several.
                let Some(format) = files.iter().filter_map(|f| format_of(f)).min() else {
                    return Err(Error::Dataset {
                        path: repo.id.clone(),
                        message: format!(
                            "the Hub repository holds no .parquet, .jsonl or .txt files; the \
                             Hub's own parquet conversion of it may: --dataset {}@refs/convert/parquet",
                            repo.id
                        ),
                    });
                };
                let mut chosen: Vec<&String> = files
                    .iter()
                    .filter(|f| format_of(f) == Some(format))
                    .collect();
                chosen.sort();
                let in_split: Vec<&String> = chosen
                    .iter()
                    .copied()
                    .filter(|f| f.split(['/', '-', '.', '_']).any(|part| part == opts.split))
                    .collect();
                if !in_split.is_empty() {
                    chosen = in_split;
                }
                Ok(chosen
                    .into_iter()
                    .map(|name| DataFile::Hub {
                        repo: repo.clone(),
                        name: name.clone(),
                        hub: hub.clone(),
                    })
                    .collect())
            }
            DatasetSource::Path(path) => Ok(local_files(path)?
                .into_iter()
                .map(DataFile::Local)
                .collect()),
        }
    }

    /// Streams the documents, file by file.
    pub fn documents(&self, opts: &DatasetOptions, hub: &HubOptions) -> Result<Documents> {
        Ok(Documents {
            files: self.files(opts, hub)?.into_iter(),
            current: Vec::new().into_iter(),
            opts: opts.clone(),
        })
    }
}

/// One file of a dataset.
#[derive(Debug, Clone)]
pub enum DataFile {
    /// On disk.
    Local(PathBuf),
    /// In a Hub repository, fetched into the cache when first read.
    Hub {
        /// The repository.
        repo: HubRepo,
        /// The file's path in it.
        name: String,
        /// Where the cache is and whether the network may be used.
        hub: HubOptions,
    },
}

impl DataFile {
    /// The file on disk, fetched first if it is on the Hub.
    pub fn path(&self) -> Result<PathBuf> {
        match self {
            DataFile::Local(path) => Ok(path.clone()),
            DataFile::Hub { repo, name, hub } => repo.fetch(name, hub),
        }
    }
}

/// The file types read, in order of preference.
const EXTENSIONS: [&str; 3] = ["parquet", "jsonl", "txt"];

fn has_extension(name: &str, ext: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, e)| e == ext)
}

fn local_files(path: &Path) -> Result<Vec<PathBuf>> {
    let err = |message: String| Error::Dataset {
        path: path.display().to_string(),
        message,
    };
    if path.is_file() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        return if EXTENSIONS.contains(&ext) {
            Ok(vec![path.to_path_buf()])
        } else {
            Err(err(format!(
                "unsupported file type `.{ext}`: use .parquet, .jsonl or .txt"
            )))
        };
    }
    if !path.is_dir() {
        return Err(err("no such file or directory".into()));
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| Error::io("listing", &dir, e))?
            .flatten()
        {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(err(
            "the directory holds no .parquet, .jsonl or .txt files".into()
        ));
    }
    Ok(files)
}

/// Iterator over the documents of a dataset; each file is read when reached.
pub struct Documents {
    files: std::vec::IntoIter<DataFile>,
    current: std::vec::IntoIter<String>,
    opts: DatasetOptions,
}

impl Iterator for Documents {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(doc) = self.current.next() {
                return Some(Ok(doc));
            }
            let file = self.files.next()?;
            match file.path().and_then(|path| read_file(&path, &self.opts)) {
                Ok(docs) => self.current = docs.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// All documents of one file.
pub fn read_file(path: &Path, opts: &DatasetOptions) -> Result<Vec<String>> {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "parquet" => read_parquet(path, &opts.column),
        "jsonl" => read_jsonl(path, &opts.column),
        _ => read_txt(path, opts.txt_split),
    }
}

fn read_parquet(path: &Path, column: &str) -> Result<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::types::Type;

    let err = |message: String| Error::Dataset {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| err(format!("not a readable parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema();
    let Some(field) = schema.get_fields().iter().find(|f| f.name() == column) else {
        let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        return Err(err(format!(
            "no column `{column}`; the columns are: {} (choose one with --column)",
            names.join(", ")
        )));
    };
    // Read only the text column.
    let projection = Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| err(e.to_string()))?;
    let unreadable = |e: parquet::errors::ParquetError| {
        let hint = match e {
            parquet::errors::ParquetError::General(ref m) if m.contains("brotli") => {
                " (brotli is left out of this build: re-save the file with snappy or zstd)"
            }
            _ => "",
        };
        err(format!("cannot read column `{column}`: {e}{hint}"))
    };
    let rows = reader.get_row_iter(Some(projection)).map_err(unreadable)?;
    let mut docs = Vec::new();
    for row in rows {
        let row = row.map_err(unreadable)?;
        match row.get_column_iter().next().map(|(_, value)| value) {
            Some(Field::Str(text)) => docs.push(text.clone()),
            // A missing document is an empty one, which collection skips.
            Some(Field::Null) | None => docs.push(String::new()),
            Some(other) => {
                return Err(err(format!(
                    "column `{column}` holds values such as `{other}`, not text \
                     (choose the text column with --column)"
                )))
            }
        }
    }
    Ok(docs)
}

fn read_jsonl(path: &Path, field: &str) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io("reading", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| Error::Dataset {
            path: format!("{}:{}", path.display(), i + 1),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        match &value[field] {
            serde_json::Value::String(s) => docs.push(s.clone()),
            serde_json::Value::Null => {
                let keys: Vec<&String> = value
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                return Err(err(format!(
                    "no field `{field}`; the fields are: {} (choose one with --column)",
                    keys.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            other => return Err(err(format!("field `{field}` is not a string: {other}"))),
        }
    }
    Ok(docs)
}

fn read_txt(path: &Path, split: TxtSplit) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(match split {
        TxtSplit::WholeFile => vec![text],
        TxtSplit::BlankLines => {
            let mut docs = Vec::new();
            let mut current = String::new();
            for line in text.lines() {
                if line.trim().is_empty() {
                    if !current.is_empty() {
                        docs.push(std::mem::take(&mut current));
                    }
                } else {
                    if !current.is_empty() {
                        current.push('\n');
                    }
                    current.push_str(line);
                }
            }
            if !current.is_empty() {
                docs.push(current);
            }
            docs
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_dataset_name_reads_back_as_the_same_source() {
        for spec in [
            "NeelNanda/pile-10k",
            "org/text@refs/convert/parquet",
            "org/text@v2",
        ] {
            let source = DatasetSource::parse(spec);
            assert_eq!(source.name(), spec);
            assert_eq!(DatasetSource::parse(&source.name()), source);
        }
        assert_eq!(DatasetSource::parse("org/text@main").name(), "org/text");
    }
}
