//! Running the service: `serve`, `process`, `api`, `simulate`, `migrate`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use super::*;
use crate::stream::simulate::{run_simulation, SimulateOptions};
use crate::{app, telemetry};

pub(super) fn run_serve(
    config_dir: &Path,
    args: &ServeArgs,
    require_brokers: bool,
) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    telemetry::init_logging(&settings.log);
    let _traces = crate::otel::init(&settings.otel).context("cannot set up tracing")?;
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

pub(super) fn run_api(config_dir: &Path) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    telemetry::init_logging(&settings.log);
    let _traces = crate::otel::init(&settings.otel).context("cannot set up tracing")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(app::run_api(settings, app::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run_simulate(config_dir: &Path, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
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

pub(super) fn run_migrate(config_dir: &Path) -> anyhow::Result<ExitCode> {
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
