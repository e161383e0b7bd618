//! Command-line interface. Exit codes: 0 success; 1 the job ran but some input was bad (reported on
//! stderr); 2 the job could not run (unreadable or invalid fences, bad arguments).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use h3o::Resolution;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::batch::run_batch;
use crate::geofence::{
    geojson, parse_fences, FenceIndex, GeoJsonError, IndexOptions, ParseOptions, ParsedFences,
    Strategy,
};
use crate::stream::simulate::{run_simulation, SimulateOptions};
use crate::{app, telemetry};

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
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

fn run_serve(
    config_dir: &Path,
    args: &ServeArgs,
    require_brokers: bool,
) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    telemetry::init_logging(&settings.log);
    let simulate = (args.simulate_rate > 0.0).then(|| SimulateOptions {
        rate: args.simulate_rate,
        users: args.simulate_users,
        ..SimulateOptions::default()
    });
    let options = app::ServeOptions {
        simulate,
        require_brokers,
        api: !require_brokers,
        ..app::ServeOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(app::serve(settings, options, app::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn run_api(config_dir: &Path) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    telemetry::init_logging(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(app::run_api(settings, app::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// The store and authentication, for the user and session commands.
async fn open_auth(config_dir: &Path) -> anyhow::Result<Arc<crate::auth::Auth>> {
    let settings = app::settings_from(config_dir)?;
    let store = crate::store::Store::connect(&settings.database.url).await?;
    crate::auth::Auth::start(store, settings.auth)
        .await
        .map_err(|e| anyhow::anyhow!(crate::error::error_chain(&e)))
}

fn run_user_add(config_dir: &Path, args: &UserAddArgs) -> anyhow::Result<ExitCode> {
    let roles = crate::auth::Role::parse_list(&args.roles.join(",")).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.id.is_none() || args.usernames.len() == 1,
        "--id names one user; give one username with it"
    );
    let password = if !args.password_stdin && std::io::IsTerminal::is_terminal(&io::stdin()) {
        rpassword::prompt_password(format!("password for {}: ", args.usernames.join(", ")))
            .context("cannot read the password from the terminal")?
    } else {
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    block_on(async {
        let auth = open_auth(config_dir).await?;
        let bar = progress_bar(args.usernames.len() as u64, "users");
        for username in &args.usernames {
            let user = auth
                .create_user(username, password.clone(), roles.clone(), args.id.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{username}: {}", crate::error::error_chain(&e)))?;
            bar.inc(1);
            if args.usernames.len() == 1 {
                println!(
                    "added user {:?} (id {:?}) with roles {}",
                    user.username,
                    user.id,
                    crate::auth::Role::join(&user.roles)
                );
            }
        }
        bar.finish_and_clear();
        if args.usernames.len() > 1 {
            println!("added {} users", args.usernames.len());
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

fn run_user_disable(config_dir: &Path, id: &str) -> anyhow::Result<ExitCode> {
    block_on(async {
        let auth = open_auth(config_dir).await?;
        auth.disable_user(id)
            .await
            .map_err(|e| anyhow::anyhow!(crate::error::error_chain(&e)))?;
        println!("disabled {id:?}; its sessions are revoked");
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

fn run_session_issue(config_dir: &Path, args: &SessionIssueArgs) -> anyhow::Result<ExitCode> {
    let client = crate::auth::ClientKind::parse(&args.client).with_context(|| {
        format!(
            "unknown client kind {:?} (mobile, ops, consumer)",
            args.client
        )
    })?;
    block_on(async {
        let auth = open_auth(config_dir).await?;
        for user in &args.users {
            let tokens = auth
                .issue_session(user, client, Some(args.label.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("{user}: {}", crate::error::error_chain(&e)))?;
            println!(
                "{}",
                serde_json::json!({"user_id": user, "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token, "session_id": tokens.session_id,
                    "expires_in": tokens.expires_in})
            );
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(length: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

fn run_migrate(config_dir: &Path) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    block_on(async {
        let store = crate::store::Store::connect(&settings.database.url).await?;
        let version = store.catalog_version().await?;
        println!(
            "database ready ({:?}), catalog version {version}",
            store.backend()
        );
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

fn run_promotions_import(config_dir: &Path, file: &Path) -> anyhow::Result<ExitCode> {
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

fn run_import(config_dir: &Path, args: &ImportArgs) -> anyhow::Result<ExitCode> {
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

fn run_simulate(config_dir: &Path, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    telemetry::init_logging(&settings.log);
    let brokers = args
        .brokers
        .clone()
        .unwrap_or_else(|| settings.kafka.brokers.clone());
    anyhow::ensure!(
        !brokers.trim().is_empty(),
        "no brokers: pass --brokers (e.g. the address `geopromo serve` printed) or set kafka.brokers"
    );
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    let fences = app::load_fence_file(&settings)?;
    let options = SimulateOptions {
        rate: args.rate,
        users: args.users,
        events: args.events,
        duration: args.duration_s.map(std::time::Duration::from_secs_f64),
        bad_ratio: args.bad_ratio,
        seed: args.seed,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    // Ctrl-C ends the run cleanly (flushing what was produced) instead of killing it.
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(app::shutdown_signal());
            handler_stop.store(true, Ordering::Relaxed);
        }
    });
    let report = run_simulation(
        &settings.kafka,
        &brokers,
        &fences,
        &options,
        &stop,
        |report| {
            eprintln!(
                "produced {:>10}  {:>9.0} events/s",
                report.produced,
                report.rate()
            );
        },
    )?;
    println!(
        "produced {} events ({} deliberately bad) to {} in {:.2} s: {:.0} events/s",
        report.produced,
        report.bad,
        settings.kafka.input_topic,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(length);
    // Only worth a bar for large files (at a terminal; indicatif hides it otherwise).
    if length < 16 * 1024 * 1024 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} read ({bytes_per_sec})",
    ) {
        bar.set_style(style);
    }
    let mut bytes = Vec::with_capacity(length as usize);
    bar.wrap_read(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    bar.finish_and_clear();
    Ok(bytes)
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
