//! The `capbridge` command: run the host, list components, check and explain policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use capbridge_api::{BridgeConfig, Mode, ServeOptions, Server};
use capbridge_policy::Policy;
use capbridge_runtime::caps;
use capbridge_runtime::linker::{classify, ImportKind};
use capbridge_runtime::own_files::OwnFiles;
use capbridge_runtime::{
    CallOptions, ComponentInfo, ComponentStatus, LoadEvent, Runtime, RuntimeConfig,
};
use clap::{Parser, Subcommand};

mod audit;
mod bridge_socket;
mod desktop;
mod prompts;
mod replay;
mod unix_socket;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// capbridge: a native capability host whose capabilities are sandboxed WebAssembly components,
/// each getting only what its policy file grants.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Directory of component `.wasm` files [default: ./components if present, else the XDG data dir]
    #[arg(long, global = true, env = "CAPBRIDGE_COMPONENTS")]
    components: Option<PathBuf>,
    /// Directory of policy files, one `<component-id>.toml` each [default: ./policy if present, else the XDG data dir]
    #[arg(long, global = true, env = "CAPBRIDGE_POLICIES")]
    policies: Option<PathBuf>,
    /// Directory of compiled components [default: the XDG cache dir]
    #[arg(long, global = true, env = "CAPBRIDGE_CACHE")]
    cache: Option<PathBuf>,
    /// The bridge config file (port, allowed origins, timeouts) [default: $XDG_CONFIG_HOME/capbridge/config.toml]
    #[arg(long, global = true, env = "CAPBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// With no command: the desktop shell when there is a display (the status window, prompt
    /// windows; it serves the contract too), else the same as `serve`.
    #[command(flatten)]
    serve: ServeArgs,
    /// With no command: `osloop://open`, `osloop://focus`, `osloop://ensure-server` or
    /// `osloop://settings` (or `capbridge://…`), handed to the capbridge already running on
    /// this desktop, else done by this one as it starts.
    #[arg(value_name = "URL")]
    url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Listen on this port for this run only (0: any free port); the persisted port is unchanged.
    #[arg(long, env = "CAPBRIDGE_PORT")]
    port: Option<u16>,
    /// Dev mode for this run: also allow the config's loopback `dev-origins`.
    #[arg(long)]
    dev: bool,
    /// Record every call made through the contract into DIR, one trace file each
    /// (`DIR/<component>/<time>-<function>-<random>.trace.json`), to replay with `capbridge replay`.
    #[arg(long, value_name = "DIR", env = "CAPBRIDGE_RECORD")]
    record: Option<PathBuf>,
    /// Answer seed 001's desktop bridge (JSON-RPC) on this Unix socket [default:
    /// $XDG_RUNTIME_DIR/capbridge/desktop-bridge.sock, else ~/.capbridge/bridge.sock]
    #[arg(long, value_name = "PATH", env = "CAPBRIDGE_BRIDGE_SOCKET")]
    bridge_socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Load every component and serve the localhost contract on 127.0.0.1 until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Show or change the bridge config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and call components.
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Check and explain policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// What components and sessions did with their grants: the audit log `capbridge serve`
    /// keeps (newest first).
    Audit {
        /// Only entries of the last DURATION (`90s`, `15m`, `2h`, `7d`).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only entries of this component.
        #[arg(long)]
        component: Option<String>,
        /// Only entries of this session: `RUN:N` (as printed), or `N` in the latest run.
        #[arg(long)]
        session: Option<String>,
        /// Only entries of this kind (`event.published`), or family (`process.*`).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a component with every host call answered from a recorded trace (nothing real is
    /// touched); fail with the first divergence.
    Replay {
        /// The trace file (`component call --record`, `serve --record`).
        trace: PathBuf,
        /// The component to replay [default: `<components dir>/<trace's component id>.wasm`]
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
    /// Replay every trace (`*.trace.json`) under DIR/tests: a component's recorded tests.
    Test {
        /// The component's folder [default: .]
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The component to replay [default: `<components dir>/<trace's component id>.wasm`]
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
    /// Answer the prompts of a running `capbridge serve` (commands and MCP server registrations
    /// waiting for your approval), from any terminal of the same user.
    Prompts {
        /// The port of the bridge [default: the config's port]
        #[arg(long)]
        port: Option<u16>,
        #[command(subcommand)]
        command: PromptsCommand,
    },
    /// Stop all automation at once: every component's mouse and keyboard input on the running
    /// capbridge turns off (a running drag stops), until a person turns it on again.
    StopInput {
        /// The port of the bridge [default: the config's port]
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Subcommand)]
enum PromptsCommand {
    /// The prompts waiting for an answer, oldest first.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Allow this once.
    Allow { id: String },
    /// Allow, and whitelist the template: the same request runs without asking again.
    Always { id: String },
    /// Reject.
    Reject { id: String },
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Each component: whether it loaded (or why not), its imports against its grants, its exports.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Call an exported function with JSON arguments and print the JSON result.
    Call {
        component: String,
        function: String,
        /// Arguments as a JSON object keyed by parameter name.
        #[arg(default_value = "{}")]
        args: String,
        /// Record the call and every host call it made into FILE (a trace to replay with
        /// `capbridge replay FILE`).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// Open a component's web UI in the browser, signed in: a one-time link, valid for 60 s,
    /// from the running capbridge (over its prompt socket).
    Open {
        component: String,
        /// Print the link instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// The port of the bridge [default: the config's port]
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the config file's path and contents (creating it with the defaults if missing).
    Show,
    /// Persist the listening port (the bridge never changes it by itself).
    SetPort { port: u16 },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate every policy and show, per component, its imports against its grants.
    Check,
    /// A reviewer's plain-language summary of one policy, risky grants flagged.
    Explain {
        /// A policy file, or a component id (read from the policy directory).
        policy: String,
    },
    /// Print the JSON Schema of the policy format.
    Schema,
    /// Record each component's and policy's SHA-256 in `<policy dir>/capbridge.lock`: from
    /// then on a component loads only while both match (review first, then pin).
    Pin {
        /// Pin only these components (the others keep their pins) [default: every component]
        ids: Vec<String>,
    },
    /// What a change to a policy widens or narrows, grant by grant; risky widenings flagged.
    Diff {
        /// The policy before the change.
        old: PathBuf,
        /// The policy after it.
        new: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Exit with status 3 when a widening is flagged RISK (for a review gate in CI).
        #[arg(long)]
        deny_risky: bool,
    },
}

fn main() -> ExitCode {
    capbridge_runtime::engine::skip_error_backtraces();
    let cli = Cli::parse();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_env("CAPBRIDGE_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                ),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_file = config_path(&cli);
    let config = runtime_config(&cli, config_file.as_deref().ok())?;
    let Some(command) = cli.command else {
        let config_file = config_file?;
        if let Some(url) = &cli.url {
            if !url.starts_with("osloop:") && !url.starts_with("capbridge:") {
                anyhow::bail!(
                    "`{url}` is neither a command nor an osloop:// URL; see `capbridge --help`"
                );
            }
        }
        return if desktop::available() {
            desktop::run(config, &config_file, cli.serve, cli.url.as_deref())
        } else if let Some(url) = &cli.url {
            anyhow::bail!(
                "{url}: osloop:// links go to capbridge's desktop shell, which needs a display; \
                 headless, run `capbridge serve`"
            )
        } else {
            eprintln!("{}", desktop::HEADLESS);
            serve(config, &config_file, cli.serve)
        };
    };
    match command {
        Command::Policy(PolicyCommand::Explain { policy }) => {
            let file = if Path::new(&policy).is_file()
                || policy.contains('/')
                || policy.ends_with(".toml")
            {
                PathBuf::from(&policy)
            } else {
                config.policy_dir.join(format!("{policy}.toml"))
            };
            let policy = caps::load_policy(&component_id(&file), &file)?;
            let others = other_policies(&config.policy_dir, &file);
            let others: Vec<&Policy> = others.iter().collect();
            let mut explanation = policy.explain();
            explanation
                .lines
                .extend(caps::explain_among(&policy, &others));
            print!("{explanation}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Diff {
            old,
            new,
            json,
            deny_risky,
        }) => {
            // Both are versions of one component's policy: the new file's name is its id.
            let id = component_id(&new);
            let before = caps::load_policy(&id, &old)?;
            let after = caps::load_policy(&id, &new)?;
            let diff = capbridge_policy::diff(&before, &after);
            if json {
                println!("{}", serde_json::to_string_pretty(&diff)?);
            } else {
                print!("{diff}");
            }
            Ok(if deny_risky && diff.risky_widenings().next().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Policy(PolicyCommand::Pin { ids }) => {
            let (pins, changes) = capbridge_runtime::pins::Pins::pin(
                &config.components_dir,
                &config.policy_dir,
                &ids,
            )?;
            for change in &changes {
                println!("{change}");
            }
            println!(
                "{} component(s) pinned in {}{}",
                pins.components.len(),
                pins.path.display(),
                if changes.is_empty() {
                    " (no change)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Schema) => {
            println!("{}", serde_json::to_string_pretty(&caps::policy_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check) => {
            let runtime = load(config)?;
            Ok(policy_check(&runtime))
        }
        Command::Component(ComponentCommand::List { json }) => {
            let runtime = load(config)?;
            if json {
                let list: Vec<ComponentInfo> = runtime.components();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for info in runtime.components() {
                    print_component(&info);
                }
                if runtime.components().is_empty() {
                    println!(
                        "no components in {}",
                        runtime.config().components_dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Component(ComponentCommand::Call {
            component,
            function,
            args,
            record,
        }) => {
            let args: serde_json::Value =
                serde_json::from_str(&args).context("arguments are not valid JSON")?;
            // Only the component called: the others' compile and load problems are not this
            // call's business.
            let runtime = load_where(config, |id| id == component)?;
            let tokio = tokio::runtime::Runtime::new()?;
            let options = CallOptions::default();
            let outcome = match record {
                None => tokio.block_on(runtime.call(&component, &function, &args, &options))?,
                Some(file) => {
                    let (trace, outcome) =
                        tokio.block_on(runtime.record(&component, &function, &args, &options))?;
                    trace.save(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
                    eprintln!(
                        "recorded {} host calls into {}",
                        trace.host_calls.len(),
                        file.display()
                    );
                    outcome?
                }
            };
            if !outcome.stdout.bytes.is_empty() {
                eprintln!(
                    "--- stdout ---\n{}",
                    String::from_utf8_lossy(&outcome.stdout.bytes)
                );
            }
            if !outcome.stderr.bytes.is_empty() {
                eprintln!(
                    "--- stderr ---\n{}",
                    String::from_utf8_lossy(&outcome.stderr.bytes)
                );
            }
            println!("{}", serde_json::to_string_pretty(&outcome.result)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            since,
            component,
            session,
            kind,
            limit,
            json,
        } => audit::show(
            &config.state_dir.join("audit"),
            audit::Filters {
                since,
                component,
                session,
                kind,
                limit,
            },
            json,
        ),
        Command::Replay { trace, wasm } => replay::replay_one(config, &trace, wasm.as_deref()),
        Command::Test { dir, wasm } => replay::test_dir(config, &dir, wasm.as_deref()),
        Command::Serve(args) => serve(config, &config_file?, args),
        Command::Component(ComponentCommand::Open {
            component,
            print,
            port,
        }) => {
            let port = match port {
                Some(port) => port,
                None => BridgeConfig::load_or_create(&config_file?)?.port,
            };
            open_component(port, &component, print)
        }
        Command::Prompts { port, command } => {
            let port = match port {
                Some(port) => port,
                None => BridgeConfig::load_or_create(&config_file?)?.port,
            };
            answer_prompts(port, command)
        }
        Command::StopInput { port } => {
            let port = match port {
                Some(port) => port,
                None => BridgeConfig::load_or_create(&config_file?)?.port,
            };
            stop_input(port)
        }
        Command::Config(command) => {
            let path = config_file?;
            let mut bridge = BridgeConfig::load_or_create(&path)?;
            if let ConfigCommand::SetPort { port } = command {
                bridge.port = port;
                bridge.save(&path)?;
            }
            println!("# {}", path.display());
            print!("{}", std::fs::read_to_string(&path)?);
            if bridge.web_approvals {
                println!(
                    "# WARNING: web-approvals = true lets the web app approve its own commands: \
                     a prompt it answers runs without you. Set it to false to answer prompts \
                     only here (the `serve` terminal, `capbridge prompts`)."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `serve` and the desktop shell do first: the config (with `--dev`), one try at binding
/// the port, and the runtime, loaded knowing that port so no grant can reach it.
struct Prepared {
    bridge: BridgeConfig,
    port: u16,
    listener: Result<tokio::net::TcpListener, capbridge_api::BindError>,
    runtime: Arc<Runtime>,
}

fn prepare(
    config: RuntimeConfig,
    config_path: &Path,
    args: ServeArgs,
    tokio: &tokio::runtime::Runtime,
) -> anyhow::Result<Prepared> {
    let mut bridge = BridgeConfig::load_or_create(config_path)?;
    if args.dev {
        bridge.mode = Mode::Dev;
    }
    let port = args.port.unwrap_or(bridge.port);
    let listener = tokio.block_on(capbridge_api::bind(port));
    let bound = match &listener {
        Ok(listener) => listener.local_addr()?.port(),
        Err(_) => port,
    };
    let config = RuntimeConfig {
        own_files: config.own_files.clone().with_port(bound),
        audit_retention: Some(bridge.audit_retention()),
        record_dir: args.record,
        ..config
    };
    Ok(Prepared {
        bridge,
        port,
        listener,
        runtime: Arc::new(load(config)?),
    })
}

/// Files the bridge and its components create are the user's alone: a component replaces a
/// file by renaming a new one over it and cannot copy the old mode bits, so a private file must
/// not come back world-readable. Called first by `serve` and the desktop shell.
fn keep_files_private() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

fn serve(config: RuntimeConfig, config_path: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    keep_files_private();
    let tokio = tokio::runtime::Runtime::new()?;
    let bridge_socket_path = args.bridge_socket.clone();
    let Prepared {
        bridge,
        listener,
        runtime,
        ..
    } = prepare(config, config_path, args, &tokio)?;
    let listener = listener?;
    let components = runtime.components();
    let loaded = components
        .iter()
        .filter(|c| c.status == ComponentStatus::Loaded)
        .count();
    let total = components.len();
    tokio.block_on(async {
        // Before the address is printed: whoever reads it may send SIGTERM at once.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let options = ServeOptions {
            config_path: Some(config_path.to_path_buf()),
            ..ServeOptions::default()
        };
        let origins = bridge.allowed_origins();
        let mode = bridge.mode;
        let server = Server::start(listener, runtime.clone(), bridge, options)?;
        // Components and policies dropped in, changed or removed take effect without a restart.
        let _watcher = runtime.watch()?;
        let (socket, answering) = prompts::answer_on_socket(server.addr().port(), &runtime).await?;
        let bridge_socket =
            bridge_socket::answer_on_socket(bridge_socket_path, runtime.clone()).await;
        prompts::ask_in_terminal(runtime.approvals().clone());
        println!("capbridge listening on http://{}", server.addr());
        println!(
            "  {loaded} of {total} components loaded; mode {mode:?}; allowed origins: {}",
            if origins.is_empty() {
                format!("none (add `origins` in {})", config_path.display())
            } else {
                origins.join(", ")
            }
        );
        println!(
            "  commands and MCP servers wait for your approval: here (when this is a terminal), \
             or `capbridge prompts --port {}` (socket {})",
            server.addr().port(),
            socket.display()
        );
        if let Some(bridge) = &bridge_socket {
            println!(
                "  desktop bridge (JSON-RPC): {}; `capbridge stop-input` stops all automation",
                bridge.path.display()
            );
        }
        println!("  Ctrl-C or SIGTERM to stop");
        let mut events = runtime.events().subscribe();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                event = events.recv() => if let Ok(event) = event {
                    tracing::debug!(source = %event.source, topic = %event.topic, "event {}", event.payload);
                },
            }
        }
        // Nobody reads events any more: a command's output must not wait for this reader.
        drop(events);
        answering.abort();
        let _ = std::fs::remove_file(&socket);
        drop(bridge_socket);
        server.shutdown(capbridge_api::SHUTDOWN_GRACE).await?;
        println!("capbridge: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One request over the prompt socket of the bridge on `port`; its refusal is the error.
fn ask_bridge(port: u16, request: &prompts::Request) -> anyhow::Result<prompts::Response> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = tokio.block_on(prompts::ask(port, request))?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_default());
    }
    Ok(response)
}

/// `capbridge component open`: a launch link from the bridge on `port`, printed, and opened in
/// the person's browser (`xdg-open`) unless `print`.
fn open_component(port: u16, id: &str, print: bool) -> anyhow::Result<ExitCode> {
    let response = ask_bridge(
        port,
        &prompts::Request::OpenComponent { id: id.to_string() },
    )?;
    let url = response.url.unwrap_or_default();
    println!("{url}");
    if !print {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .status();
        match opened {
            Ok(status) if status.success() => {
                eprintln!("opened in your browser; the link works once, within 60 s")
            }
            Ok(status) => anyhow::bail!("xdg-open {status}: open the link above yourself"),
            Err(e) => anyhow::bail!("cannot run xdg-open ({e}): open the link above yourself"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `capbridge stop-input`: all automation off, over the prompt socket of the bridge on `port`.
fn stop_input(port: u16) -> anyhow::Result<ExitCode> {
    let response = ask_bridge(port, &prompts::Request::StopInput)?;
    match response.stopped.unwrap_or(0) {
        0 => println!("automation was off; it stays off until a person turns it on again"),
        n => println!("automation stopped ({n} on); a component must ask a person again"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `capbridge prompts …`: one request over the prompt socket of the bridge on `port`.
fn answer_prompts(port: u16, command: PromptsCommand) -> anyhow::Result<ExitCode> {
    use capbridge_runtime::approvals::Decision;
    let decide = |id, decision| (prompts::Request::Decide { id, decision }, false);
    let (request, json) = match command {
        PromptsCommand::List { json } => (prompts::Request::List, json),
        PromptsCommand::Allow { id } => decide(id, Decision::AllowOnce),
        PromptsCommand::Always { id } => decide(id, Decision::AllowAndWhitelist),
        PromptsCommand::Reject { id } => decide(id, Decision::Reject),
    };
    let response = ask_bridge(port, &request)?;
    if let Some(list) = response.prompts {
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else if list.is_empty() {
            println!("no prompts waiting");
        } else {
            for prompt in &list {
                println!("{}", prompts::describe(prompt));
            }
        }
    }
    if let (Some(prompt), prompts::Request::Decide { decision, .. }) = (response.prompt, &request) {
        println!("{}: {}", prompt.id, prompts::decision_name(*decision));
    }
    Ok(ExitCode::SUCCESS)
}

/// The policies in `dir` other than `except`, those that read (for `policy explain`'s risks of
/// grants taken together).
fn other_policies(dir: &Path, except: &Path) -> Vec<Policy> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let except = std::fs::canonicalize(except).ok();
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| std::fs::canonicalize(p).ok() != except)
        .filter_map(|p| {
            let id = p.file_stem()?.to_str()?.to_string();
            caps::load_policy(&id, &p).ok()
        })
        .collect()
}

/// The component id a policy file is for: its name without `.toml`.
fn component_id(policy_file: &Path) -> String {
    policy_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn config_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.config {
        Some(path) => Ok(path.clone()),
        None => Ok(directories::ProjectDirs::from("", "", "capbridge")
            .context("no home directory: pass --config")?
            .config_dir()
            .join("config.toml")),
    }
}

/// Loads every component, showing compile progress on stderr (a first start compiles; later
/// starts read the compile cache).
fn load(config: RuntimeConfig) -> anyhow::Result<Runtime> {
    load_where(config, |_| true)
}

/// Loads the components `wanted` accepts, as [`load`] does.
fn load_where(config: RuntimeConfig, wanted: impl Fn(&str) -> bool) -> anyhow::Result<Runtime> {
    let runtime = Runtime::new(config)?;
    runtime.load_where(wanted, &mut |event| {
        if let LoadEvent::Compiling {
            component,
            index,
            total,
        } = event
        {
            eprintln!(
                "compiling {component} ({index} of {total}); later starts use the compile cache"
            );
        }
    })?;
    Ok(runtime)
}

fn runtime_config(cli: &Cli, config_file: Option<&Path>) -> anyhow::Result<RuntimeConfig> {
    let dirs = directories::ProjectDirs::from("", "", "capbridge");
    // What decides what components may do is out of their reach (besides the components,
    // policy and cache directories, which the runtime adds).
    let mut own_files = OwnFiles::new();
    if let Some(file) = config_file {
        own_files = own_files.with_path("config file", file);
    }
    if let Some(dirs) = &dirs {
        own_files = own_files.with_path("data directory", dirs.data_dir());
    }
    let default_dir = |local: &str, data_sub: &str| -> anyhow::Result<PathBuf> {
        if Path::new(local).is_dir() {
            return Ok(PathBuf::from(local));
        }
        let dirs = dirs
            .as_ref()
            .context("no home directory: pass --components and --policies")?;
        Ok(dirs.data_dir().join(data_sub))
    };
    Ok(RuntimeConfig {
        components_dir: match &cli.components {
            Some(dir) => dir.clone(),
            None => default_dir("components", "components")?,
        },
        policy_dir: match &cli.policies {
            Some(dir) => dir.clone(),
            None => default_dir("policy", "policy")?,
        },
        cache_dir: match &cli.cache {
            Some(dir) => dir.clone(),
            None => dirs
                .as_ref()
                .context("no home directory: pass --cache")?
                .cache_dir()
                .join("compiled"),
        },
        state_dir: match &dirs {
            Some(dirs) => dirs.data_dir().join("state"),
            None => anyhow::bail!("no home directory: capbridge has nowhere to keep its state"),
        },
        record_dir: None,
        audit_retention: None,
        picker: caps::dialog::Picker::from_env(),
        own_files,
    })
}

fn describe_import(import: &str, info: &ComponentInfo) -> (bool, String) {
    match classify(import) {
        ImportKind::Baseline => (true, "baseline".into()),
        ImportKind::Capability(cap) => match &info.policy {
            Some(policy) if cap.granted_by(policy) => {
                (true, format!("granted by grants.{}", cap.key()))
            }
            _ => (false, format!("NOT GRANTED: needs grants.{}", cap.key())),
        },
        ImportKind::NotProvided => (false, "NOT PROVIDED by capbridge".into()),
    }
}

/// A load failure's reason as lines to show: the runtime names each refused import's reason in
/// one sentence (imports refused for the same reason share it), joined with `; `.
fn reason_lines(id: &str, reason: &str) -> Vec<String> {
    let next = format!("; component `{id}` imports ");
    let mut parts = reason.split(&next);
    let first = parts.next().unwrap_or_default().to_string();
    std::iter::once(first)
        .chain(parts.map(|part| format!("component `{id}` imports {part}")))
        .collect()
}

fn print_component(info: &ComponentInfo) {
    match &info.status {
        ComponentStatus::Loaded => println!("{}  loaded", info.id),
        ComponentStatus::Failed { reason } => match &reason_lines(&info.id, reason)[..] {
            [line] => println!("{}  NOT LOADED: {line}", info.id),
            lines => {
                println!("{}  NOT LOADED:", info.id);
                for line in lines {
                    println!("    {line}");
                }
            }
        },
    }
    println!("  wasm:    {}", info.wasm_path.display());
    println!("  policy:  {}", info.policy_path.display());
    if let Some(policy) = &info.policy {
        let grants = policy.grant_summary();
        println!(
            "  grants:  {}",
            if grants.is_empty() {
                "nothing beyond the baseline".into()
            } else {
                grants.join("; ")
            }
        );
    }
    if !info.imports.is_empty() {
        println!("  imports:");
        for import in &info.imports {
            println!("    {import}  ({})", describe_import(import, info).1);
        }
    }
    if !info.exports.is_empty() {
        println!("  exports:");
        for export in &info.exports {
            match &export.unsupported {
                None => println!("    {}", export.signature),
                Some(why) => println!("    {}  (not callable with JSON: {why})", export.signature),
            }
        }
    }
    println!();
}

/// Prints every component's imports against its grants and every policy's validity; returns
/// failure if anything is wrong.
fn policy_check(runtime: &Runtime) -> ExitCode {
    let mut problems = 0;
    for info in &runtime.components() {
        let ok = info.status == ComponentStatus::Loaded;
        println!(
            "{}: {}  ({})",
            info.id,
            if ok { "ok" } else { "PROBLEM" },
            info.policy_path.display()
        );
        for import in &info.imports {
            let (ok, why) = describe_import(import, info);
            println!("  {} {import}  {why}", if ok { "✓" } else { "✗" });
        }
        if let ComponentStatus::Failed { reason } = &info.status {
            for line in reason_lines(&info.id, reason) {
                println!("  {line}");
            }
            problems += 1;
        }
    }
    for orphan in runtime.orphan_policies() {
        let id = orphan
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        match caps::load_policy(id, &orphan) {
            Ok(_) => println!(
                "{id}: policy is valid, but there is no component {id}.wasm  ({})",
                orphan.display()
            ),
            Err(e) => {
                println!("{id}: PROBLEM  {e}");
                problems += 1;
            }
        }
    }
    if problems == 0 {
        println!("all policies valid; every component's imports are granted");
        ExitCode::SUCCESS
    } else {
        println!("{problems} problem(s)");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::reason_lines;

    #[test]
    fn each_reason_is_a_line() {
        let reason = "component `x` imports `s/a`, `s/b` (2 interfaces), which capbridge does not \
                      provide to components (raw sockets cannot be granted; use wasi:http); \
                      component `x` imports `l`, which p.toml does not grant (it needs `grants.log`)";
        assert_eq!(
            reason_lines("x", reason),
            [
                "component `x` imports `s/a`, `s/b` (2 interfaces), which capbridge does not \
                 provide to components (raw sockets cannot be granted; use wasi:http)",
                "component `x` imports `l`, which p.toml does not grant (it needs `grants.log`)",
            ]
        );
        let other = "no policy file: a component loads only with a policy at /p/x.toml";
        assert_eq!(reason_lines("x", other), [other]);
    }
}
