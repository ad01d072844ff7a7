//! `injixo-sync init --sample PATH`: a complete, commented configuration for a sample export.
//!
//! It reads the sample and guesses what a person would otherwise fill in by hand: the encoding
//! (a byte-order mark, valid UTF-8, else Windows-1252), the delimiter and whether the first
//! row is a header (Asterisk's cdr_csv Master.csv is recognised by its columns), a timestamp
//! format that reads every value of the chosen column (or of a date and a time column), the
//! duration columns (seconds, `h:mm:ss`), and for columns of a handful of words a `values`
//! lookup stub listing them. Every guess is a comment saying what it saw; what it cannot guess
//! (the configuration id, the API key) is left for the first `check` to name. The preview of the
//! first rows ends the file, as comments, so the output stays a valid configuration.
//!
//! This file is the command's entry; [`sample`] reads and classifies the sample, [`key`] checks
//! candidate keys over all of it, and [`render`] writes the configuration from what was seen.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

pub mod acd;
mod key;
mod render;
mod sample;

/// What `init` writes a configuration from.
pub enum From {
    /// A sample export (`--sample PATH`).
    Sample(PathBuf),
    /// A named ACD's recipe (`--acd NAME`), with what the flags tell about the site.
    Acd(String, acd::Site),
}

/// `injixo-sync init --sample PATH | --acd NAME ... [--output FILE]`.
pub fn main(from: From, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (text, next) = match from {
        From::Sample(sample) => (generate(&sample)?, "preview --source acd"),
        From::Acd(name, _) if name == "list" => {
            print!("{}", acd::list());
            return Ok(ExitCode::SUCCESS);
        }
        From::Acd(name, site) => (
            acd::render(acd::recipe(&name)?, &site)?,
            "preview --source NAME",
        ),
    };
    match output {
        Some(path) => {
            anyhow::ensure!(
                !path.exists(),
                "{} exists already: choose another --output, or move it away",
                path.display()
            );
            std::fs::write(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let config = path.display();
            eprintln!(
                "wrote {config}: fill in what it marks TODO; then `injixo-sync --config {config} \
                 {next}` shows what each row becomes, `injixo-sync --config \
                 {config} check` tries the key against the API, and `injixo-sync --config \
                 {config} run` (or the service) starts delivering"
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration text for a sample file.
pub fn generate(sample: &Path) -> anyhow::Result<String> {
    let sample = sample::read(sample)?;
    let mut out = String::new();
    let config = render::render(&sample, &mut out);
    out.push_str(&render::preview_comments(&sample, &config));
    Ok(out)
}
