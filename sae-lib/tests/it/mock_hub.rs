//! A Hugging Face Hub stand-in on a local port, serving repositories as the Hub serves them to
//! the `hf-hub` client: a model's file list at `/api/models/{id}/revision/main` and each file
//! at `/{id}/resolve/main/{path}` (a dataset's under `datasets/`), with the commit and etag
//! headers the client reads and the byte ranges it asks for. Large files (`.safetensors`,
//! `.parquet`) are redirected to a content server, as the Hub sends LFS files to its CDN. Every
//! path asked for is recorded, so a test can say what was downloaded. A gated stand-in answers
//! as the Hub does for a gated repository: 401 without a token, 403 for a token not granted.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A repository's files: (path in the repository, contents).
pub type Files = Vec<(String, Vec<u8>)>;
type Repos = [(String, Files)];

/// The commit every file is served at.
pub const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A running stand-in; its thread ends with the test process.
pub struct MockHub {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
}

impl MockHub {
    /// Serves the model repository `id` holding `files` (path in the repository, contents).
    pub fn serve(id: &str, files: Files) -> Self {
        Self::serve_all(vec![(id.to_string(), files)])
    }

    /// Serves several repositories, each `(id, files)`; a dataset's id is `datasets/org/name`.
    pub fn serve_all(repos: Vec<(String, Files)>) -> Self {
        Self::start(repos, None)
    }

    /// Serves `repos` gated: only requests carrying `Bearer {token}` are answered.
    pub fn serve_gated(repos: Vec<(String, Files)>, token: &str) -> Self {
        Self::start(repos, Some(token.to_string()))
    }

    fn start(repos: Vec<(String, Files)>, gate: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (requests, tokens): (Arc<Mutex<Vec<String>>>, _) = Default::default();
        let log = Log {
            paths: Arc::clone(&requests),
            tokens: Arc::clone(&tokens),
        };
        let cdn = format!("{endpoint}/cdn/");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &repos, &cdn, gate.as_deref(), &log);
            }
        });
        Self {
            endpoint,
            requests,
            tokens,
        }
    }

    /// Hub options that reach this stand-in, with `cache` as the Hub cache and no token.
    pub fn options(&self, cache: &Path) -> sae_lib::hub::HubOptions {
        sae_lib::hub::HubOptions {
            cache_dir: cache.to_path_buf(),
            endpoint: Some(self.endpoint.clone()),
            offline: false,
            token: None,
        }
    }

    /// The bearer token of each request to the Hub itself (not its content server), in order.
    pub fn tokens_seen(&self) -> Vec<Option<String>> {
        self.tokens.lock().unwrap().clone()
    }

    /// The files of the repository downloaded so far (each once, in order).
    pub fn downloaded(&self) -> Vec<String> {
        let mut files: Vec<String> = Vec::new();
        for path in self.requests.lock().unwrap().iter() {
            if let Some((_, file)) = path.split_once("/resolve/main/") {
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
            }
        }
        files
    }

    /// How many requests the content server (the redirects' target) answered.
    pub fn cdn_requests(&self) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|p| p.starts_with("/cdn/")).count()
    }

    /// How many times the file list was asked for.
    pub fn listings(&self) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|p| p.starts_with("/api/")).count()
    }
}

/// Every file under `dir`, as `(prefix/relative path, contents)`.
pub fn files_of(dir: &Path, prefix: &str) -> Files {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_string_lossy();
                out.push((format!("{prefix}{rel}"), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

struct Log {
    paths: Arc<Mutex<Vec<String>>>,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
}

fn answer(stream: TcpStream, repos: &Repos, cdn: &str, gate: Option<&str>, log: &Log) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut range: Option<(usize, Option<usize>)> = None;
    let mut token: Option<String> = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        let lower = header.trim().to_ascii_lowercase();
        if let Some(spec) = lower.strip_prefix("range: bytes=") {
            let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
            range = Some((start.parse().unwrap_or(0), end.parse().ok()));
        }
        if lower.starts_with("authorization: bearer ") {
            token = Some(header.trim()["authorization: bearer ".len()..].to_string());
        }
    }
    log.paths.lock().unwrap().push(path.clone());
    // The content server's links are signed: it needs no token, as the Hub's CDN.
    if !path.starts_with("/cdn/") {
        log.tokens.lock().unwrap().push(token.clone());
        let refusal = match (gate, token.as_deref()) {
            (Some(_), None) => Some("401 Unauthorized"),
            (Some(gate), Some(token)) if gate != token => Some("403 Forbidden"),
            _ => None,
        };
        if let Some(status) = refusal {
            reply(stream, status, "", b"gated");
            return;
        }
    }
    let listed = repos.iter().find(|(id, _)| {
        let api = match id.strip_prefix("datasets/") {
            Some(_) => id.clone(),
            None => format!("models/{id}"),
        };
        path == format!("/api/{api}/revision/main")
    });
    let file = repos.iter().find_map(|(id, files)| {
        let name = path.strip_prefix(&format!("/{id}/resolve/main/"))?;
        files.iter().find(|(n, _)| n == name)
    });
    let etag_of =
        |name: &str, bytes: &[u8]| format!("{:016x}{:08x}", fnv(name.as_bytes()), bytes.len());
    let large = |name: &str| name.ends_with(".safetensors") || name.ends_with(".parquet");
    let on_cdn = path.strip_prefix("/cdn/").and_then(|etag| {
        let mut all = repos.iter().flat_map(|(_, files)| files);
        all.find(|(n, b)| etag_of(n, b) == etag)
    });
    let (status, headers, body) = if let Some((_, files)) = listed {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, _)| serde_json::json!({ "rfilename": n }))
            .collect();
        let json = serde_json::json!({ "sha": COMMIT, "siblings": siblings });
        ("200 OK", String::new(), json.to_string().into_bytes())
    } else if let Some((name, bytes)) = file.filter(|(n, _)| large(n)) {
        // The etag names the blob in the cache: one per file.
        let etag = etag_of(name, bytes);
        let headers = format!(
            "x-repo-commit: {COMMIT}\r\nx-linked-etag: \"{etag}\"\r\nx-linked-size: {}\r\nlocation: {cdn}{etag}\r\n",
            bytes.len()
        );
        ("302 Found", headers, Vec::new())
    } else if let Some((name, bytes)) = file.or(on_cdn) {
        let (start, end) = range.unwrap_or((0, None));
        let end = end
            .unwrap_or(bytes.len().saturating_sub(1))
            .min(bytes.len() - 1);
        let headers = format!(
            "x-repo-commit: {COMMIT}\r\netag: \"{}\"\r\ncontent-range: bytes {start}-{end}/{}\r\n",
            etag_of(name, bytes),
            bytes.len()
        );
        ("206 Partial Content", headers, bytes[start..=end].to_vec())
    } else {
        ("404 Not Found", String::new(), b"not found".to_vec())
    };
    reply(stream, status, &headers, &body);
}

fn reply(mut stream: TcpStream, status: &str, headers: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
