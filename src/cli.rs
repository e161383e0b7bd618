//! Command-line interface. Exit codes: 0 success; 1 the job ran but some input was bad (reported on
//! stderr); 2 the job could not run (unreadable or invalid fences, bad arguments).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use h3o::Resolution;

use crate::batch::run_batch;
use crate::geofence::{
    geojson, parse_fences, FenceIndex, GeoJsonError, IndexOptions, ParseOptions, ParsedFences,
    Strategy,
};

#[derive(Debug, Parser)]
#[command(
    name = "geopromo",
    version,
    about = "Location-based promotions from GPS points and city polygons"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Match a file of points against fences; one NDJSON line per point, in input order.
    Match(MatchArgs),
    /// Work with fence files.
    #[command(subcommand)]
    Fences(FencesCommand),
}

#[derive(Debug, Subcommand)]
pub enum FencesCommand {
    /// Report every problem in a GeoJSON fence file, one per line; exit 1 if there is any.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct FenceFileArgs {
    /// Default tolerance in metres for fences without properties.tolerance_m.
    #[arg(long, default_value_t = 1000.0)]
    pub tolerance_m: f64,
    /// Largest number of vertices accepted per fence.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_vertices: usize,
}

impl FenceFileArgs {
    fn parse_options(&self) -> ParseOptions {
        ParseOptions::default()
            .default_tolerance_m(self.tolerance_m)
            .max_vertices(self.max_vertices)
    }
}

#[derive(Debug, Args)]
pub struct MatchArgs {
    /// GeoJSON Feature or FeatureCollection of Polygon/MultiPolygon fences.
    #[arg(long)]
    pub fences: PathBuf,
    #[command(flatten)]
    pub fence_file: FenceFileArgs,
    /// Match with the valid fences and report the invalid ones, instead of refusing the file.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Lookup path: the lon/lat raster cover (fastest), the H3 cover, or R-tree candidates with exact tests.
    #[arg(long, value_enum, default_value_t = IndexKind::Raster)]
    pub index: IndexKind,
    /// Raster cells per degree along each axis (with --index raster).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=512))]
    pub cells_per_degree: u32,
    /// Finest H3 resolution of the cover (with --index h3).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub h3_resolution: u8,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Points file (CSV with header id,lat,lon or NDJSON); standard input when absent or "-".
    pub points: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexKind {
    Raster,
    H3,
    Rtree,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub fence_file: FenceFileArgs,
}

/// Parses the command line and runs it.
#[must_use]
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Match(args) => run_match(&args),
        Command::Fences(FencesCommand::Validate(args)) => run_validate(&args),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
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

fn run_match(args: &MatchArgs) -> anyhow::Result<ExitCode> {
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
    let mut options = IndexOptions::default().cells_per_degree(args.cells_per_degree);
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
    let input: Box<dyn Read> = match &args.points {
        None => Box::new(io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(io::stdin().lock()),
        Some(p) => Box::new(File::open(p).with_context(|| format!("cannot open {}", p.display()))?),
    };
    let stdout = io::stdout().lock();
    let summary = run_batch(
        &index,
        strategy,
        input,
        io::BufWriter::with_capacity(1 << 20, stdout),
    )?;
    for bad in &summary.bad_rows {
        eprintln!("line {}: {}", bad.line, bad.reason);
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

fn run_validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
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
