//! What the demo prints: steps and results as lines, and on a terminal a live status line
//! under them (redrawn in place); elsewhere (CI, a pipe) the status as a plain line a second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Show {
    terminal: bool,
    start: Instant,
    last_status: Option<Instant>,
    status_shown: bool,
}

impl Show {
    pub fn new() -> Show {
        Show {
            terminal: std::io::stdout().is_terminal(),
            start: Instant::now(),
            last_status: None,
            status_shown: false,
        }
    }

    fn clear_status(&mut self) {
        if self.terminal && self.status_shown {
            print!("\r\x1b[2K");
            self.status_shown = false;
        }
    }

    /// A line that stays.
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.clear_status();
        println!(
            "[{:5.1}s] {}",
            self.start.elapsed().as_secs_f64(),
            text.as_ref()
        );
    }

    /// A heading for the next step.
    pub fn step(&mut self, text: impl AsRef<str>) {
        self.clear_status();
        println!("\n== {}", text.as_ref());
    }

    /// The live status: redrawn on a terminal (at most 10 times a second), a line a second
    /// otherwise.
    pub fn status(&mut self, text: impl AsRef<str>) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if self.last_status.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_status = Some(Instant::now());
        if self.terminal {
            print!("\r\x1b[2K  {}", text.as_ref());
            let _ = std::io::stdout().flush();
            self.status_shown = true;
        } else {
            println!(
                "  [{:5.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                text.as_ref()
            );
        }
    }

    pub fn done(&mut self) {
        self.clear_status();
    }
}
