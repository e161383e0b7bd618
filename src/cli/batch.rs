//! `match`: points from a file against fences, as NDJSON.

use std::fs::File;
use std::io::{self, Read};
use std::process::ExitCode;

use anyhow::Context;
use h3o::Resolution;

use super::*;
use crate::batch::{run_batch, ColumnNames};
use crate::geofence::{FenceIndex, IndexOptions, Strategy};

/// Points files below this size (about 5 M CSV points) get the coarser raster by default: on the US
/// counties at 1 km it builds in 63 ms instead of 160 ms and matches ~15 ns a point slower, so it wins
/// until about 6 M points (`geopromo match` on 1 M points: 0.24 s wall instead of 0.33 s).
const SMALL_INPUT_BYTES: u64 = 150_000_000;

/// The raster density `geopromo match` uses without `--cells-per-degree`: 32 for a small file, 64 for a
/// large one or standard input (size unknown).
fn default_cells_per_degree(input_bytes: Option<u64>) -> u32 {
    match input_bytes {
        Some(bytes) if bytes < SMALL_INPUT_BYTES => 32,
        _ => 64,
    }
}

pub(super) fn run_match(args: &MatchArgs) -> anyhow::Result<ExitCode> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot start the worker threads")?;
    }
    let options = args
        .fence_file
        .parse_options()
        .skip_invalid(args.skip_invalid);
    let parsed = load_fences(&args.fences, &options)?;
    let cells_per_degree = args.cells_per_degree.unwrap_or_else(|| {
        default_cells_per_degree(
            args.points
                .as_deref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len()),
        )
    });
    let mut options = IndexOptions::default().cells_per_degree(cells_per_degree);
    let strategy = match args.index {
        IndexKind::Raster => Strategy::Raster,
        IndexKind::Rtree => Strategy::RTree,
        IndexKind::H3 => {
            let res =
                Resolution::try_from(args.h3_resolution).context("invalid --h3-resolution")?;
            options = options.h3_resolution(Some(res));
            Strategy::H3
        }
    };
    let index = FenceIndex::build(&parsed.fences, options);
    let stats = index.stats();
    eprintln!(
        "index: {} fences, {} parts, {} vertices, {} raster cells, {} H3 cells, ~{:.0} MB, built in {:.0} ms",
        stats.fences,
        stats.parts,
        stats.vertices,
        stats.raster_cells,
        stats
            .h3_cells_per_resolution
            .iter()
            .map(|c| c.1)
            .sum::<usize>(),
        stats.approx_heap_bytes as f64 / 1e6,
        stats.build_time.as_secs_f64() * 1e3
    );
    let mut bar = None;
    let input: Box<dyn Read> = match &args.points {
        None => Box::new(io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(io::stdin().lock()),
        Some(p) => {
            let file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let progress = bytes_bar(file.metadata().map(|m| m.len()).unwrap_or(0), "matched");
            let input = Box::new(progress.wrap_read(file));
            bar = Some(progress);
            input
        }
    };
    let names = ColumnNames {
        id: args.id_col.clone(),
        lat: args.lat_col.clone(),
        lon: args.lon_col.clone(),
    };
    let stdout = io::stdout().lock();
    let summary = run_batch(
        &index,
        strategy,
        &names,
        input,
        io::BufWriter::with_capacity(1 << 20, stdout),
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = summary?;
    for bad in &summary.bad_rows {
        eprintln!("{}: {}", bad.at, bad.reason);
    }
    let secs = summary.elapsed.as_secs_f64();
    eprintln!(
        "matched {} points ({} with matches, {} bad rows) in {:.3} s: {:.0} points/s",
        summary.points,
        summary.points_matched,
        summary.bad_rows.len(),
        secs,
        summary.points as f64 / secs.max(1e-9)
    );
    Ok(if summary.bad_rows.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_get_the_coarser_raster_and_unknown_sizes_the_finer() {
        assert_eq!(default_cells_per_degree(Some(29_000_000)), 32);
        assert_eq!(default_cells_per_degree(Some(SMALL_INPUT_BYTES)), 64);
        assert_eq!(default_cells_per_degree(None), 64);
    }
}
