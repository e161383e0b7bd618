//! Fences and promotions from files: `fences import`, `fences validate`, `promotions import`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::*;
use crate::app;
use crate::geofence::{geojson, parse_fences, GeoJsonError, ParseOptions, ParsedFences};

pub(super) fn run_promotions_import(config_dir: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read promotions from {}", file.display()))?;
    let promotions =
        crate::promo::parse_promotions(&bytes).with_context(|| format!("in {}", file.display()))?;
    let version = block_on(async {
        let store = crate::store::Store::connect(&settings.database.url).await?;
        let version = store
            .upsert_promotions(&promotions, crate::promo::timestamp::now_ms())
            .await
            .map_err(|e| anyhow::anyhow!(crate::error::error_chain(&e)))?;
        anyhow::Ok(version)
    })??;
    println!(
        "imported {} promotions ({} active) from {}; catalog version {version}",
        promotions.len(),
        promotions.iter().filter(|p| p.active).count(),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run_import(config_dir: &Path, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    let options = args
        .fence_file
        .parse_options()
        .skip_invalid(args.skip_invalid);
    let parsed = load_fences(&args.file, &options)?;
    let started = std::time::Instant::now();
    let bar = progress_bar(parsed.fences.len() as u64, "fences stored");
    let version = block_on(async {
        let store = crate::store::Store::connect(&settings.database.url).await?;
        let version = store
            .upsert_fences_with_progress(&parsed.fences, crate::promo::timestamp::now_ms(), |n| {
                bar.set_position(n as u64);
            })
            .await?;
        let promotions = store.load_promotions().await?.len();
        anyhow::Ok((version, promotions))
    })??;
    let (version, promotions) = version;
    bar.finish_and_clear();
    if promotions == 0 {
        // A store that got fences this way is not seeded by `serve`, so its promotions must come
        // from somewhere too; say so instead of letting the processor run with none.
        eprintln!(
            "note: the store holds no promotions, so nobody can become eligible yet. Add them with \
             `geopromo promotions import FILE` (e.g. config/promotions.json) or POST /v1/promotions"
        );
    }
    println!(
        "imported {} fences ({} vertices) from {} in {:.2} s; {} skipped; catalog version {version}",
        parsed.fences.len(),
        parsed.fences.iter().map(|f| f.vertex_count()).sum::<usize>(),
        args.file.display(),
        started.elapsed().as_secs_f64(),
        parsed.skipped.len()
    );
    Ok(if parsed.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn run_validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_file(&args.file)?;
    let options = args.fence_file.parse_options().skip_invalid(true);
    let parsed = parse_fences(&bytes, &options)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    for line in geojson::problem_lines(&parsed.skipped) {
        println!("{line}");
    }
    for repair in &parsed.repairs {
        println!("{repair}");
    }
    let total = parsed.fences.len() + parsed.skipped.len();
    eprintln!(
        "{}: {total} features, {} valid, {} invalid, {} repairs",
        args.file.display(),
        parsed.fences.len(),
        parsed.skipped.len(),
        parsed.repairs.len()
    );
    Ok(if parsed.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Loads fences, printing every problem (and every repair) to stderr.
pub fn load_fences(path: &Path, options: &ParseOptions) -> anyhow::Result<ParsedFences> {
    let bytes = read_file(path)?;
    match parse_fences(&bytes, options) {
        Ok(parsed) => {
            for line in geojson::problem_lines(&parsed.skipped) {
                eprintln!("{}: skipped: {line}", path.display());
            }
            for repair in &parsed.repairs {
                eprintln!("{}: {repair}", path.display());
            }
            Ok(parsed)
        }
        Err(err @ GeoJsonError::Invalid { .. }) => {
            for line in err.report_lines() {
                eprintln!("{}: {line}", path.display());
            }
            anyhow::bail!("{}: {err}; fix them or pass --skip-invalid", path.display())
        }
        Err(err) => Err(err).with_context(|| format!("cannot load fences from {}", path.display())),
    }
}
