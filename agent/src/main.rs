//! The `backstop` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use backstop::config::{Config, ConfigErrors, DEFAULT_PATH};
use backstop::telemetry::{self, LogFormat};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// `backstop --version`: the version, the commit it was built from and the
/// target, as `build.rs` found them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BACKSTOP_GIT_COMMIT"),
    ", ",
    env!("BACKSTOP_TARGET"),
    ")"
);

/// Probes a service and its dependencies, judges each new deployment against
/// the last good one, and calls the platform's rollback API once when it is
/// worse.
#[derive(Parser)]
#[command(name = "backstop", version = VERSION, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "BACKSTOP_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: probe, judge, roll back, serve /metrics.
    Run(ConfigArg),
    /// Run every probe once and print the results; exit 1 if a critical probe failed.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only the probes of this level (1-4).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
        level: Option<u8>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check a configuration file without touching the network.
    Validate(ConfigArg),
    /// List the deployments the store knows, newest first: state, when it
    /// became stable or was rolled back, the rollback's rule and reason.
    /// Reads the store, or the running agent's /v1/deployments when it holds
    /// the store; exit 2 when neither can be read.
    History {
        #[command(flatten)]
        config: ConfigArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How many deployments, the newest (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Ask the running agent for a deployment's verdict: exit 0 when it
    /// became stable, 1 when it was rolled back or is unhealthy, 2 when there
    /// is none (still watching without --wait, a time-out, an error).
    Verdict {
        #[command(flatten)]
        config: ConfigArg,
        /// The deployment's id; default the one the agent watches now.
        #[arg(long)]
        deployment: Option<String>,
        /// Wait until the deployment has a verdict (or the time-out).
        #[arg(long)]
        wait: bool,
        /// The longest wait (250ms, 5s, 15m, ...).
        #[arg(long, default_value = "30m", value_parser = backstop::duration::parse)]
        timeout: Duration,
    },
    /// A self-contained demonstration: a service goes bad and is rolled back.
    Demo,
    /// Ask a running agent's /healthz once; exit 0 when it answers 2xx, else 1
    /// (for a container engine's HEALTHCHECK).
    Healthcheck {
        /// The agent's /healthz URL.
        #[arg(long, env = "BACKSTOP_HEALTHCHECK_URL", default_value = backstop::supervise::DEFAULT_HEALTHZ_URL)]
        url: String,
        /// How long to wait for the answer (250ms, 5s, ...).
        #[arg(long, default_value = "3s", value_parser = backstop::duration::parse)]
        timeout: Duration,
    },
    /// Print a shell completion script for backstop.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per command into a directory.
    Man {
        /// Write backstop.1, backstop-run.1, ... into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// glibc gives each thread that allocates an arena of its own; the agent's
/// few threads allocate little, and one arena measured 0.6-0.8 MiB less
/// resident memory at no measurable CPU cost (bench/README.md). glibc's own
/// `MALLOC_ARENA_MAX`, when set, still decides.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists;
        // mallopt only changes the allocator's tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    telemetry::init_logs(cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if let Some(errors) = err.downcast_ref::<ConfigErrors>() {
                eprintln!("backstop: {errors}");
            } else {
                eprintln!("backstop: {err:#}");
            }
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 2 for usage and configuration errors (and a store unusable at start),
/// 1 for anything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigErrors>().is_some()
        || err.downcast_ref::<backstop::run::UnusableStore>().is_some()
    {
        2
    } else {
        1
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load_file(&arg.config)?)
}

/// Runtime worker threads unless tokio's own `TOKIO_WORKER_THREADS` says
/// otherwise.
const WORKER_THREADS: usize = 2;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none_or(|v| v.is_empty()) {
        builder.worker_threads(WORKER_THREADS);
    }
    Ok(builder.enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate(arg) => {
            let config = load(&arg)?;
            println!(
                "{}: ok ({} probes, {} rules)",
                arg.config.display(),
                config.probes.len(),
                config.rules.len()
            );
            Ok(0)
        }
        Command::Check {
            config,
            level,
            format,
        } => {
            let config = load(&config)?;
            let results = runtime()?.block_on(backstop::check::run_checks(&config, level));
            match format {
                Format::Table => print!("{}", backstop::check::to_table(&results)),
                Format::Json => println!("{}", backstop::check::to_json(&results)),
            }
            Ok(backstop::check::exit_code(&results))
        }
        Command::History {
            config,
            format,
            limit,
        } => {
            let config = load(&config)?;
            let json = matches!(format, Format::Json);
            Ok(runtime()?.block_on(backstop::history::history(
                &config,
                usize::from(limit),
                json,
            )))
        }
        Command::Verdict {
            config,
            deployment,
            wait,
            timeout,
        } => {
            let config = load(&config)?;
            Ok(runtime()?.block_on(backstop::history::verdict(
                &config, deployment, wait, timeout,
            )))
        }
        Command::Demo => runtime()?.block_on(backstop::demo::run()),
        Command::Run(arg) => {
            let config = load(&arg)?;
            let handle = telemetry::install()?;
            let listen = config.agent.listen;
            runtime()?.block_on(async {
                // Readiness and watchdog for a `Type=notify` unit; nothing otherwise.
                let notify = tokio::spawn(backstop::supervise::systemd(listen));
                let result =
                    backstop::run::run_with_signals(arg.config.clone(), config, Some(handle)).await;
                notify.abort();
                result
            })?;
            Ok(0)
        }
        Command::Healthcheck { url, timeout } => {
            let checked = runtime()?.block_on(backstop::supervise::check_healthz(&url, timeout));
            match checked {
                Ok(()) => Ok(0),
                Err(e) => {
                    eprintln!("backstop: unhealthy: {e:#}");
                    Ok(1)
                }
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "backstop", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)?;
            out.flush()?;
            Ok(0)
        }
        Command::Man { dir: None } => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            out.flush()?;
            Ok(0)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(0)
        }
    }
}
