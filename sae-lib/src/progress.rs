//! Progress for long loops: an indicatif bar on a terminal; periodic plain lines where output
//! is not a terminal but someone is watching (Jupyter, where indicatif draws nothing); silence
//! otherwise (CI logs, pipes).
//!
//! `SAE_PROGRESS=bar|lines|none` overrides the choice; the notebooks set `lines`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar on stderr.
    Bar,
    /// A plain line on stdout at most every two seconds, and one at the end (for Jupyter).
    Lines,
    /// Nothing shown.
    None,
}

impl ProgressMode {
    /// From `SAE_PROGRESS`, else lines inside an evcxr (Jupyter) kernel, where a bar would
    /// draw nothing, else a bar when stderr is a terminal, else nothing.
    pub fn from_env() -> Self {
        match std::env::var("SAE_PROGRESS").as_deref() {
            Ok("bar") => Self::Bar,
            Ok("lines") => Self::Lines,
            Ok("none") => Self::None,
            _ if std::env::var_os("EVCXR_IS_RUNTIME").is_some() => Self::Lines,
            _ if std::io::stderr().is_terminal() => Self::Bar,
            _ => Self::None,
        }
    }
}

struct Lines {
    last: Instant,
    pos: u64,
    message: String,
}

/// A progress display over `total` steps of `unit`.
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: Option<Mutex<Lines>>,
    label: String,
    unit: &'static str,
    total: Option<u64>,
    start: Instant,
}

const LINE_INTERVAL: Duration = Duration::from_secs(2);

impl Progress {
    /// A display in the mode chosen by [`ProgressMode::from_env`].
    pub fn new(label: &str, total: Option<u64>, unit: &'static str) -> Self {
        Self::with_mode(ProgressMode::from_env(), label, total, unit)
    }

    /// A display in `mode`, whatever the environment says.
    pub fn with_mode(
        mode: ProgressMode,
        label: &str,
        total: Option<u64>,
        unit: &'static str,
    ) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let template = format!(
                "{{prefix}} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_string());
            bar
        });
        let lines = (mode == ProgressMode::Lines).then(|| {
            Mutex::new(Lines {
                last: Instant::now(),
                pos: 0,
                message: String::new(),
            })
        });
        Self {
            bar,
            lines,
            label: label.into(),
            unit,
            total,
            start: Instant::now(),
        }
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(lines) = &self.lines {
            let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
            l.pos += n;
            if l.last.elapsed() >= LINE_INTERVAL {
                l.last = Instant::now();
                println!("{}", self.line(l.pos, &l.message));
            }
        }
    }

    /// Replaces the trailing message (loss, tokens/s, ...).
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.clone());
        }
        if let Some(lines) = &self.lines {
            lines.lock().unwrap_or_else(|e| e.into_inner()).message = message;
        }
    }

    fn line(&self, pos: u64, message: &str) -> String {
        let total = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        format!(
            "{}: {pos}{total} {} [{:.0}s] {message}",
            self.label,
            self.unit,
            self.start.elapsed().as_secs_f64()
        )
    }

    /// Seconds since the display started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Ends the display, printing a last line in line mode.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        if let Some(lines) = &self.lines {
            let l = lines.lock().unwrap_or_else(|e| e.into_inner());
            println!("{}", self.line(l.pos, &l.message));
        }
    }
}
