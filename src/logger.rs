//! Log lines on stderr, in simple_logger's format (`WARN  [target] message`),
//! written so that a stderr that fails (a log file on a full disk, a pipe whose
//! reader has gone) costs the line, never the server: `eprintln!`, which
//! simple_logger uses, panics when the write fails.

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{:<5} [{}] {}\n",
            record.level().as_str(),
            record.target(),
            record.args()
        );
        // One write per line; a failed write is dropped (there is nowhere to report it).
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Installs the logger with `level` as the most verbose level shown.
pub fn init(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
