//! The `pgsplit` command: parse flags, load and validate configuration (exit code 64 on any
//! configuration error), set up logging and the runtime, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgsplit::config::{Config, ConfigError, Overrides, Settings};

/// A read/write-splitting, pooling PostgreSQL proxy.
#[derive(Parser, Debug, Clone)]
#[command(name = "pgsplit", version, about)]
struct Cli {
    /// TOML configuration file (every key is optional; flags override it).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address clients connect to (server.listen).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address of the admin HTTP endpoint (admin.listen; "" turns it off).
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<String>,
    /// The primary, as host:port or postgres://user:password@host:port/db (cluster.primary).
    #[arg(long, value_name = "URL")]
    primary: Option<String>,
    /// A replica, in the same form; repeat for several (cluster.replicas).
    #[arg(long = "replica", value_name = "URL")]
    replicas: Vec<String>,
    /// transaction or session (pool.mode).
    #[arg(long)]
    pool_mode: Option<String>,
    /// Backend connections per (node, user, database) (pool.size).
    #[arg(long)]
    pool_size: Option<usize>,
    /// Replicas further behind get no reads, e.g. 500ms (consistency.max_lag).
    #[arg(long, value_parser = humantime::parse_duration)]
    max_lag: Option<std::time::Duration>,
    /// session, global, time or eventual (consistency.mode).
    #[arg(long)]
    consistency: Option<String>,
    /// A user allowed into the SQL admin console (database "pgsplit"); repeat for several
    /// (admin.users).
    #[arg(long = "admin-user", value_name = "USER")]
    admin_users: Vec<String>,
    /// Log filter, e.g. info or pgsplit=debug (log.level).
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Validate a configuration file and exit (0: valid, 64: invalid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

/// EX_CONFIG-style exit code for configuration errors (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn load(cli: &Cli, file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
    let mut config = Config::load(file, std::env::vars())?;
    config.apply(&Overrides {
        listen: cli.listen.clone(),
        admin_listen: cli.admin_listen.clone(),
        primary: cli.primary.clone(),
        replicas: cli.replicas.clone(),
        pool_mode: cli.pool_mode.clone(),
        pool_size: cli.pool_size,
        log_level: cli.log_level.clone(),
        max_lag: cli.max_lag,
        consistency: cli.consistency.clone(),
        admin_users: cli.admin_users.clone(),
    });
    Settings::validate(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match load(&cli, Some(file)) {
            Ok(_) => {
                println!("{}: configuration is valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgsplit: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let settings = match load(&cli, cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgsplit: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&settings);
    // One worker runs everything on one thread, as PgBouncer does (no cross-thread wakeups);
    // more use tokio's work-stealing scheduler.
    // Auto (0): one worker on machines of one or two cores, where the database servers need the
    // other core; one per core on bigger machines.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers = match settings.server.worker_threads {
        0 if cpus <= 2 => 1,
        0 => cpus,
        n => n,
    };
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgsplit: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload_cli = cli.clone();
    let reloader: pgsplit::context::Reloader = Box::new(move || load(&reload_cli, reload_cli.config.as_deref()));
    rt.block_on(async move {
        let server = match pgsplit::server::Server::bind_with_reload(settings, Some(reloader)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pgsplit: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = server.shutdown_token();
        let ctx = server.context();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match ctx.reload() {
                    Ok(notes) => tracing::info!(?notes, "SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                }
            }
        });
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down");
            shutdown.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
        server.serve().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
