//! Command-line interface. Exit codes: 0 success; 1 the job ran but some input was bad (reported on
//! stderr); 2 the job could not run (unreadable or invalid fences, bad arguments).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::geofence::ParseOptions;

mod accounts;
mod batch;
mod catalog;
mod service;
mod topics;

use accounts::{run_session_issue, run_user_add, run_user_disable};
use batch::run_match;
pub use catalog::load_fences;
use catalog::{run_import, run_promotions_import, run_validate};
use service::{run_api, run_migrate, run_serve, run_simulate};
use topics::run_topics;

#[derive(Debug, Parser)]
#[command(
    name = "geopromo",
    version,
    about = "Location-based promotions from GPS points and city polygons"
)]
pub struct Cli {
    /// Directory of the layered settings (base.toml, then {GEOPROMO_ENV}.toml); missing files are skipped.
    #[arg(
        long,
        global = true,
        default_value = "config",
        env = "GEOPROMO_CONFIG_DIR"
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the stream processor. With no kafka.brokers configured, first start an embedded, non-durable
    /// Kafka-protocol broker on 127.0.0.1 (dev mode) and print its address.
    Serve(ServeArgs),
    /// Run the stream processor against the configured brokers only (no embedded broker).
    Process,
    /// Produce realistic GPS traffic to the input topic and print the achieved rate.
    Simulate(SimulateArgs),
    /// Create the database (SQLite) if needed and apply pending migrations.
    Migrate,
    /// Match a file of points against fences; one NDJSON line per point, in input order.
    Match(MatchArgs),
    /// Work with fence files.
    #[command(subcommand)]
    Fences(FencesCommand),
    /// Work with promotion files.
    #[command(subcommand)]
    Promotions(PromotionsCommand),
    /// Serve the HTTP API alone (no processor); locations go to kafka.brokers when configured.
    Api,
    /// Manage users who can log in.
    #[command(subcommand)]
    User(UserCommand),
    /// Open sessions without a password (service accounts, load tests).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Create or check the four Kafka topics (input, output, dead letters, state changelog).
    #[command(subcommand)]
    Topics(TopicsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the topics that do not exist, then check all four (existing ones are never altered).
    Create(TopicsArgs),
    /// Say what is wrong with the existing topics; exit 1 if anything is.
    Check(TopicsArgs),
}

/// How the topics should be set up. The defaults suit a cluster of three or more brokers; a single dev
/// broker needs `--replication-factor 1 --min-insync-replicas 1`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Partitions of every topic: the most processor instances that can share the work.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub replication_factor: i32,
    /// Set on every topic; at most replication factor - 1, so one broker down does not stop writes.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(i32).range(1..=32))]
    pub min_insync_replicas: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add users with the given roles. The password is the first line of standard input (all the named
    /// users get it); at a terminal you are asked for it.
    Add(UserAddArgs),
    /// Disable a user: no more logins, every session revoked.
    Disable {
        /// User id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// Usernames (each also the user id, unless --id is given for a single user).
    #[arg(required = true)]
    pub usernames: Vec<String>,
    /// Role: mobile, ops, consumer or admin; repeat for several.
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// The user id (token subject and GPS event key), when it differs from the username.
    #[arg(long)]
    pub id: Option<String>,
    /// Read the password from the first line of standard input without asking (for scripts). Without
    /// it, a terminal is asked for the password with echo off.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Open a session for each user and print one JSON line of tokens each (as login would answer).
    Issue(SessionIssueArgs),
}

#[derive(Debug, Args)]
pub struct SessionIssueArgs {
    /// User ids.
    #[arg(required = true)]
    pub users: Vec<String>,
    /// Client kind: mobile, ops or consumer.
    #[arg(long, default_value = "mobile")]
    pub client: String,
    /// Device label recorded on the session.
    #[arg(long, default_value = "cli")]
    pub label: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Also produce this many simulated GPS events per second into the input topic (dev mode demo).
    #[arg(long, default_value_t = 0.0)]
    pub simulate_rate: f64,
    /// Simulated users, with --simulate-rate.
    #[arg(long, default_value_t = 1000)]
    pub simulate_users: usize,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Bootstrap servers (default: kafka.brokers from the settings).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Events per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Stop after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Share of deliberately broken events (they must reach the dead-letter topic).
    #[arg(long, default_value_t = 0.001)]
    pub bad_ratio: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum FencesCommand {
    /// Report every problem in a GeoJSON fence file, one per line; exit 1 if there is any.
    Validate(ValidateArgs),
    /// Validate a GeoJSON fence file and store its fences (insert or replace by id) in one transaction;
    /// running processors pick the change up within the poll interval.
    Import(ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum PromotionsCommand {
    /// Check a promotions file (the format of config/promotions.json) and store its promotions (insert
    /// or replace by id) in one transaction; refused whole when one targets a fence the store lacks.
    Import {
        /// Promotions file: {"promotions": [...]}.
        file: PathBuf,
    },
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
    /// GeoJSON Feature or FeatureCollection of fences: Polygon/MultiPolygon, or Point with properties.radius_m.
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
    /// Raster cells per degree along each axis (with --index raster) [default: 32 for a points file under
    /// 150 MB, else 64: a coarser raster builds in a third of the time and matches a little slower, which
    /// pays off below about 5 M points]
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..=512))]
    pub cells_per_degree: Option<u32>,
    /// Finest H3 resolution of the cover (with --index h3).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub h3_resolution: u8,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// CSV column (or JSON key) of the point id [default: id; without one, the line number].
    #[arg(long, value_name = "NAME")]
    pub id_col: Option<String>,
    /// CSV column (or JSON key) of the latitude [default: lat or latitude].
    #[arg(long, value_name = "NAME")]
    pub lat_col: Option<String>,
    /// CSV column (or JSON key) of the longitude [default: lon, lng, long or longitude].
    #[arg(long, value_name = "NAME")]
    pub lon_col: Option<String>,
    /// Points file: CSV with a header, NDJSON points or GeoJSON Point features, or a GeoJSON
    /// FeatureCollection of points; standard input when absent or "-".
    pub points: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexKind {
    Raster,
    H3,
    Rtree,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub fence_file: FenceFileArgs,
    /// Import the valid features and report the invalid ones, instead of refusing the file.
    #[arg(long)]
    pub skip_invalid: bool,
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
        Command::Serve(args) => run_serve(&cli.config_dir, &args, false),
        Command::Process => run_serve(
            &cli.config_dir,
            &ServeArgs {
                simulate_rate: 0.0,
                simulate_users: 0,
            },
            true,
        ),
        Command::Simulate(args) => run_simulate(&cli.config_dir, &args),
        Command::Migrate => run_migrate(&cli.config_dir),
        Command::Fences(FencesCommand::Import(args)) => run_import(&cli.config_dir, &args),
        Command::Promotions(PromotionsCommand::Import { file }) => {
            run_promotions_import(&cli.config_dir, &file)
        }
        Command::Match(args) => run_match(&args),
        Command::Fences(FencesCommand::Validate(args)) => run_validate(&args),
        Command::Api => run_api(&cli.config_dir),
        Command::User(UserCommand::Add(args)) => run_user_add(&cli.config_dir, &args),
        Command::User(UserCommand::Disable { id }) => run_user_disable(&cli.config_dir, &id),
        Command::Session(SessionCommand::Issue(args)) => run_session_issue(&cli.config_dir, &args),
        Command::Topics(TopicsCommand::Create(args)) => run_topics(&cli.config_dir, &args, true),
        Command::Topics(TopicsCommand::Check(args)) => run_topics(&cli.config_dir, &args, false),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn progress_bar(length: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

pub(super) fn block_on<T>(future: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

/// A bar over the bytes of a file being read, shown only for large files (and, by indicatif, only when
/// stderr is a terminal).
pub(super) fn bytes_bar(length: u64, verb: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if length < 16 * 1024 * 1024 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{bytes}}/{{total_bytes}} {verb} ({{bytes_per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

pub(super) fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = bytes_bar(length, "read");
    let mut bytes = Vec::with_capacity(length as usize);
    bar.wrap_read(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    bar.finish_and_clear();
    Ok(bytes)
}
