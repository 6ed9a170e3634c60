//! The `hermes` command: parses the command line and calls the library.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use hermes::client::{Client, ClientError};
use hermes::config::Config;
use hermes::crypto::unix_now;
use hermes::wire::client::{
    ContactInfo, InboxMessage, OutboxItem, PeerStatus, Request, Response, StatusReport,
    MAX_OUTBOX_LIST, MAX_PULL_BATCH,
};
use hermes::wire::message::MAX_TEXT_BYTES;

/// Exit codes of the external contract.
const EXIT_BAD_INPUT: u8 = 1;
const EXIT_NO_DAEMON: u8 = 2;
const EXIT_WAIT_TIMED_OUT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "hermes",
    version,
    about = "Hermes: peer-to-peer messaging, sealed end to end",
    after_help = "Exit codes: 0 ok, 1 usage or bad input, 2 the daemon is not running or not reachable, 3 `push --wait` timed out."
)]
struct Cli {
    /// Config file; else $HERMES_CONFIG, else $XDG_CONFIG_HOME/hermes/node.toml (usually ~/.config/hermes/node.toml) if it exists, else the built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node in the foreground.
    Daemon {
        /// Up to 3 bootstrap addresses (IP or IP:PORT), added to the config's.
        #[arg(value_name = "ADDR")]
        bootstrap: Vec<String>,
    },
    /// Hand a message to the local daemon; prints its id once it is on disk.
    Push {
        /// Recipient: IP, IP:PORT, node address or contact name.
        #[arg(long)]
        to: String,
        /// The text, at most 60,000 bytes of UTF-8 and not empty; "-" or absent reads standard input (one trailing newline is dropped).
        #[arg(long)]
        msg: Option<String>,
        /// Wait until the delivery receipt arrives (default 60 s); exit 3 if it does not.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60")]
        wait: Option<u64>,
        /// Push each line of standard input as its own message, over one
        /// connection; prints one id per accepted line, in order (a refused
        /// line is named on stderr, and the exit status is then 1).
        #[arg(long, conflicts_with_all = ["msg", "wait"])]
        each_line: bool,
    },
    /// Print the messages received since the last pull, oldest first.
    Pull {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Show the messages without removing them from the inbox.
        #[arg(long)]
        peek: bool,
    },
    /// Show this node's address, version, uptime, config, neighbours, outbox, inbox and counters.
    Status {
        /// One JSON object (the fields scripts rely on; see docs/protocol.md).
        #[arg(long)]
        json: bool,
    },
    /// Print this node's address.
    Id,
    /// List the address book: the nodes this node knows of.
    Peers {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Names for nodes: each contact's key is pinned.
    Contacts {
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// Check, salvage or back up the store (see docs/durability.md, "Damage").
    #[command(subcommand)]
    Store(StoreCommand),
    /// What is queued or in flight: attempts, next try, expiry.
    Outbox {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<OutboxCommand>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output; `hermes man | man -l -` shows it.
    Man,
    /// Test-only: make a supervised actor fail (daemon needs HERMES_FAULT_INJECTION=1).
    #[command(hide = true)]
    DebugFault { actor: String, kind: String },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Name a node; DEST is an IP, IP:PORT (probed now, its key pinned) or a node address.
    Add {
        /// The name: letters, digits, -, _ and ., starting with a letter.
        name: String,
        /// IP, IP:PORT or node address (64 hex digits).
        dest: String,
    },
    /// List contacts and the keys pinned for IP addresses pushed to.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Forget a contact, or a pinned IP[:PORT] (to accept its new key).
    Remove {
        /// The contact's name, or the pinned IP[:PORT].
        name: String,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Stop sending a message; ID as `hermes push` printed it. A copy already on its way may still arrive.
    Cancel {
        /// The message id (32 hex digits).
        id: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Show the store's state (daemon stopped); exit 0 if intact, 1 if damaged.
    Check {
        /// A data dir to check instead of the config's (e.g. a backup).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Copy every record that still reads into a fresh store in DIR (daemon stopped).
    Salvage {
        /// A new or empty dir for the fresh store.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Copy a running node's store, consistently, into a fresh store in PATH.
    Backup {
        /// A new or empty dir for the copy.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Copy identity.key too (the copy then holds the node's secret key).
        #[arg(long)]
        with_key: bool,
    },
}

/// Longest a backup may take before the client gives up waiting.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);

/// A failure with the exit code it maps to.
struct Failure(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let e = e.into();
        let code = match e.downcast_ref::<ClientError>() {
            Some(ClientError::NotRunning { .. }) => EXIT_NO_DAEMON,
            _ => EXIT_BAD_INPUT,
        };
        Failure(code, e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, e)) => {
            eprintln!("hermes: {}", one_line(&e));
            ExitCode::from(code)
        }
    }
}

/// Text for roff: backslashes escaped, and no line taken for a request.
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The man page: clap_mangen's title, name, synopsis, description and
/// options, then every command with its usage and options (one page for
/// all, so no hermes-push(1) pages are needed), exit status, environment
/// and files.
fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    fn commands(out: &mut dyn Write, parent: &clap::Command) -> std::io::Result<()> {
        for sub in parent.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let usage = sub.clone().render_usage().to_string();
            let usage = usage.trim_start_matches("Usage: ").trim();
            writeln!(out, ".SS \"{}\"", roff(usage))?;
            if let Some(about) = sub.get_long_about().or(sub.get_about()) {
                writeln!(out, "{}", roff(&about.to_string()))?;
            }
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || ["help", "version", "config"].contains(&id) {
                    continue;
                }
                let name = match (arg.get_long(), arg.get_value_names()) {
                    (Some(long), Some(v))
                        if arg.get_num_args().is_some_and(|n| n.takes_values()) =>
                    {
                        format!("\\-\\-{long} <{}>", v.join(" "))
                    }
                    (Some(long), _) => format!("\\-\\-{long}"),
                    (None, Some(v)) => format!("<{}>", v.join(" ")),
                    (None, None) => format!("<{}>", id.to_uppercase()),
                };
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                writeln!(out, ".TP\n{name}\n{}", roff(&help))?;
            }
            commands(out, sub)?;
        }
        Ok(())
    }
    commands(out, &cmd)?;
    writeln!(
        out,
        ".SH \"EXIT STATUS\"\n0 success; 1 usage or bad input (a one-line message); 2 the daemon \
         is not running or not reachable (the message says where it looked); 3 \\fBpush \\-\\-wait\\fR \
         timed out (the message stays queued).\n\
         .SH ENVIRONMENT\n.TP\nHERMES_CONFIG\nThe config file, when \\fB\\-\\-config\\fR is not given.\n\
         .TP\nXDG_CONFIG_HOME\n$XDG_CONFIG_HOME/hermes/node.toml is read if it exists \
         (default ~/.config).\n.TP\nXDG_DATA_HOME\nThe default data dir is $XDG_DATA_HOME/hermes \
         (default ~/.local/share/hermes).\n.TP\nNOTIFY_SOCKET\nSet by systemd for \
         Type=notify: the daemon sends READY=1, STATUS= and STOPPING=1 there.\n\
         .SH SIGNALS\nSIGTERM, SIGINT: leave the network, flush the store, exit 0. SIGHUP: \
         reload the config (log.level, network.bootstrap and [limits] at once; other keys at the next start).\n\
         .SH FILES\n.TP\n/etc/hermes/node.toml\nThe config of the packaged service; every key is \
         documented there.\n.TP\n<data_dir>/identity.key, <data_dir>/store, <data_dir>/hermes.sock\n\
         The node's key (mode 0600), its store, and the client socket (mode 0600).\n\
         .SH \"SEE ALSO\"\nsystemctl(1), journalctl(1); README.md and docs/ in the source."
    )?;
    man.render_version_section(out)?;
    Ok(())
}

/// The error and its causes on one line, each said once: many errors
/// already include their cause's text, which `{:#}` would print again.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> Result<u8, Failure> {
    // These need no config (they run on a fresh install, and at build time).
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "hermes", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            man_page(&mut out).context("cannot write the man page")?;
            out.flush().context("cannot write the man page")?;
            return Ok(0);
        }
        _ => {}
    }
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Daemon { bootstrap } => {
            config.add_bootstrap(&bootstrap)?;
            let explicit = cli.config.clone();
            let reload = move || {
                let mut c = Config::load(explicit.as_deref())?;
                c.add_bootstrap(&bootstrap)?;
                Ok(c)
            };
            daemon(config, Box::new(reload))
        }
        Command::Completions { .. } | Command::Man => Ok(0),
        Command::Push {
            to,
            each_line: true,
            ..
        } => push_each_line(&config, to),
        Command::Push { to, msg, wait, .. } => push(&config, to, msg, wait),
        Command::Pull { json, peek } => pull(&config, json, peek),
        Command::Outbox { json, command } => outbox(&config, json, command),
        Command::Status { json } => status(&config, json),
        Command::Peers { json } => peers(&config, json),
        Command::Contacts { command } => contacts(&config, command),
        Command::Id => match connect(&config)?.call(&Request::Id)? {
            Response::Id { address } => {
                println!("{address}");
                Ok(0)
            }
            other => Err(unexpected(other)),
        },
        Command::Store(cmd) => store_command(&config, cmd),
        Command::DebugFault { actor, kind } => {
            match connect(&config)?.call(&Request::Fault { actor, kind })? {
                Response::Done => Ok(0),
                other => Err(unexpected(other)),
            }
        }
    }
}

type Reload = Box<dyn Fn() -> Result<Config, hermes::config::ConfigError>>;

fn daemon(config: Config, reload: Reload) -> Result<u8, Failure> {
    hermes::node::limit_malloc_arenas();
    let (log, guard, level) = hermes::logging::build(&config.log);
    let service = hermes::node::Service { level, reload };
    let result = actix_rt::System::new().block_on(hermes::node::run(config, log, service));
    drop(guard);
    result?;
    Ok(0)
}

/// A relative path taken from the current dir (the daemon's differs).
fn absolute(path: &std::path::Path) -> Result<PathBuf, Failure> {
    Ok(std::path::absolute(path).context("cannot resolve the path")?)
}

fn store_command(config: &Config, cmd: StoreCommand) -> Result<u8, Failure> {
    use hermes::crypto::identity::IDENTITY_FILE;
    use hermes::store::{self, StoreError};
    let running = |data_dir: &std::path::Path| {
        Failure(
            EXIT_NO_DAEMON,
            anyhow::anyhow!(
                "{}: a daemon is running on this data dir; stop it first, or take a copy with `hermes store backup PATH` and check that",
                data_dir.display()
            ),
        )
    };
    match cmd {
        StoreCommand::Check { dir } => {
            let data_dir = match dir {
                Some(d) => absolute(&d)?,
                None => config.node.data_dir.clone(),
            };
            let mut report = match store::check::inspect(&data_dir) {
                Ok(r) => r,
                Err(StoreError::Locked(_)) => return Err(running(&data_dir)),
                Err(e) => return Err(e.into()),
            };
            let key = data_dir.join(IDENTITY_FILE);
            match hermes::crypto::Identity::load(&data_dir) {
                Ok(Some(id)) => match report.identity {
                    Some(bound) if bound != id.address().0 => report.problems.push(format!(
                        "{}: belongs to node {}, not to the store's node",
                        key.display(),
                        id.address()
                    )),
                    _ => {}
                },
                Ok(None) if report.store_present || report.manifest.is_some() => {
                    report.problems.push(format!(
                        "{}: missing: the node's identity is gone",
                        key.display()
                    ))
                }
                Ok(None) => {}
                Err(e) => report.problems.push(e.to_string()),
            }
            println!("{report}");
            Ok(if report.intact() { 0 } else { EXIT_BAD_INPUT })
        }
        StoreCommand::Salvage { dir } => {
            let data_dir = &config.node.data_dir;
            let dest = absolute(&dir)?;
            let c = match store::check::salvage(data_dir, &dest) {
                Ok(c) => c,
                Err(StoreError::Locked(_)) => return Err(running(data_dir)),
                Err(e) => return Err(e.into()),
            };
            println!(
                "salvaged {} into {}: kept {} inbox, {} outbox and {} drop-list entries, {} peers, {} replay tags and {} message parts; {} records did not read or decode",
                data_dir.join("store").display(),
                dest.display(),
                c.inbox,
                c.outbox,
                c.drop,
                c.peers,
                c.replay,
                c.parts,
                c.skipped
            );
            match c.source_manifest {
                Some(m) if m > c.source_generation => println!(
                    "the damaged store reached generation {} of the {m} its manifest records: writes of the last {} flushes are lost",
                    c.source_generation,
                    m - c.source_generation
                ),
                Some(m) => println!("the store reached generation {} (its manifest records {m}): nothing flushed is missing", c.source_generation),
                None => println!("the store reached generation {} (no manifest to compare with)", c.source_generation),
            }
            if c.from_log {
                println!("sled would not open the store as it is; its log was read without its snapshot, up to the damage");
            }
            println!(
                "to run on it: copy {} to {} (cp -p), set node.data_dir = {:?} in the config, and start the daemon",
                data_dir.join(IDENTITY_FILE).display(),
                dest.join(IDENTITY_FILE).display(),
                dest.display().to_string()
            );
            Ok(0)
        }
        StoreCommand::Backup { path, with_key } => {
            let req = Request::Backup {
                path: absolute(&path)?.display().to_string(),
                with_key,
            };
            match connect(config)?.call_with(&req, BACKUP_TIMEOUT)? {
                Response::BackedUp(b) => {
                    println!(
                        "backed up to {}: generation {}, inbox {}, outbox {}, drop list {}, peers {}",
                        b.path, b.generation, b.inbox, b.outbox, b.drop_list, b.peers
                    );
                    if b.with_key {
                        println!("identity.key copied too: keep the backup private");
                    } else {
                        println!("identity.key not copied (--with-key copies it): a store is of no use without its key, keep one safe");
                    }
                    Ok(0)
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

fn connect(config: &Config) -> Result<Client, Failure> {
    Client::connect(&config.client.socket).map_err(|e| match e {
        ClientError::NotRunning { socket, reason } => {
            let start = match &config.source {
                Some(p) => format!("hermes daemon --config {}", p.display()),
                None => "hermes daemon".to_string(),
            };
            Failure(
                EXIT_NO_DAEMON,
                anyhow::anyhow!(
                    "the daemon is not running (looked at {}: {reason}); start it with `{start}`",
                    socket.display()
                ),
            )
        }
        other => other.into(),
    })
}

/// A refusal from the daemon, or an answer that does not fit the request.
fn unexpected(r: Response) -> Failure {
    match r {
        Response::Error { code, message } => Failure(code.max(1), anyhow::anyhow!(message)),
        other => Failure(
            EXIT_BAD_INPUT,
            anyhow::anyhow!("unexpected answer from the daemon: {other:?}"),
        ),
    }
}

fn push(
    config: &Config,
    to: String,
    msg: Option<String>,
    wait: Option<u64>,
) -> Result<u8, Failure> {
    let over = || {
        Failure(
            EXIT_BAD_INPUT,
            anyhow::anyhow!("the message is over the {MAX_TEXT_BYTES}-byte limit"),
        )
    };
    let text = match msg.as_deref() {
        Some("-") | None => {
            // Bytes first: a cut at the limit may fall inside a character,
            // and the size is what is wrong then, not the encoding.
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(MAX_TEXT_BYTES as u64 + 2)
                .read_to_end(&mut bytes)
                .context("cannot read the message from standard input")?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
            }
            if bytes.len() > MAX_TEXT_BYTES {
                return Err(over());
            }
            String::from_utf8(bytes).map_err(|_| {
                Failure(
                    EXIT_BAD_INPUT,
                    anyhow::anyhow!("the message on standard input is not valid UTF-8"),
                )
            })?
        }
        Some(t) => t.to_string(),
    };
    if text.len() > MAX_TEXT_BYTES {
        return Err(over());
    }
    if text.is_empty() {
        return Err(Failure(
            EXIT_BAD_INPUT,
            anyhow::anyhow!("the message is empty: there is nothing to send"),
        ));
    }
    let mut client = connect(config)?;
    let (id, warning) = match client.call(&Request::Push { to, text })? {
        Response::Pushed { id } => (id, None),
        Response::PushedShort { id, warning } => (id, Some(warning)),
        other => return Err(unexpected(other)),
    };
    // The id first (what scripts read), then what the user should know.
    println!("{id}");
    let _ = std::io::stdout().flush();
    if let Some(w) = warning {
        eprintln!("hermes: warning: {w}");
    }
    let Some(secs) = wait else { return Ok(0) };
    let timeout = Duration::from_secs(secs);
    let req = Request::Wait {
        id,
        timeout_ms: timeout.as_millis() as u64,
    };
    let spinner = waiting_spinner(secs);
    let answer = client.call_with(&req, timeout);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    match answer? {
        Response::Delivered => Ok(0),
        Response::TimedOut => {
            eprintln!("hermes: no delivery receipt within {secs} s; the message stays queued");
            Ok(EXIT_WAIT_TIMED_OUT)
        }
        other => Err(unexpected(other)),
    }
}

/// Messages of `push --each-line` sent ahead of their answers.
const PUSH_WINDOW: usize = 64;

fn push_each_line(config: &Config, to: String) -> Result<u8, Failure> {
    let mut client = connect(config)?;
    let stdin = std::io::stdin();
    let lines = hermes::client::Lines::new(stdin.lock(), MAX_TEXT_BYTES).map(|line| {
        line.map(|text| Request::Push {
            to: to.clone(),
            text,
        })
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut refused = 0usize;
    let mut line = 0usize;
    let mut warned = false;
    client.pipeline(lines, PUSH_WINDOW, |answer| {
        line += 1;
        match answer {
            Ok(Response::Pushed { id }) => {
                // An id is printed once its message is on disk.
                let _ = writeln!(out, "{id}");
            }
            Ok(Response::PushedShort { id, warning }) => {
                if !warned {
                    warned = true;
                    eprintln!("hermes: warning: {warning}");
                }
                let _ = writeln!(out, "{id}");
            }
            Ok(Response::Error { message, .. }) => {
                refused += 1;
                eprintln!("hermes: line {line}: {message}");
            }
            Ok(other) => {
                refused += 1;
                eprintln!("hermes: line {line}: unexpected answer {other:?}");
            }
            Err(e) => {
                refused += 1;
                eprintln!("hermes: {e}");
            }
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(if refused == 0 { 0 } else { EXIT_BAD_INPUT })
}

/// A spinner on standard error while `push --wait` waits; none when
/// standard error is not a terminal (scripts, logs).
fn waiting_spinner(secs: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let s = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    s.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    s.set_message(format!("waiting for the delivery receipt (up to {secs} s)"));
    s.enable_steady_tick(Duration::from_millis(120));
    Some(s)
}

fn pull(config: &Config, json: bool, peek: bool) -> Result<u8, Failure> {
    let mut client = connect(config)?;
    let stdout = std::io::stdout();
    let mut shown = 0u32;
    loop {
        let req = if peek {
            Request::Peek {
                skip: shown,
                max: MAX_PULL_BATCH as u32,
            }
        } else {
            Request::Pull {
                max: MAX_PULL_BATCH as u32,
            }
        };
        let msgs: Vec<InboxMessage> = match client.call(&req)? {
            Response::Messages(m) => m,
            other => return Err(unexpected(other)),
        };
        if msgs.is_empty() {
            return Ok(0);
        }
        {
            let mut out = stdout.lock();
            for m in &msgs {
                if json {
                    let v = serde_json::json!({
                        "id": m.id.to_string(),
                        "sender": m.sender,
                        "sender_ip": m.sender_ip,
                        "sent": m.sent,
                        "received": m.received,
                        "text": m.text,
                    });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{}", m.pull_line())?;
                }
            }
            // Confirm only what has really been written out.
            out.flush()?;
        }
        if peek {
            shown = shown.saturating_add(msgs.len() as u32);
            continue;
        }
        let ids = msgs.iter().map(|m| m.id).collect();
        match client.call(&Request::Confirm { ids })? {
            Response::Confirmed { .. } => {}
            other => return Err(unexpected(other)),
        }
    }
}

fn status(config: &Config, json: bool) -> Result<u8, Failure> {
    let s: StatusReport = match connect(config)?.call(&Request::Status)? {
        Response::Status(s) => *s,
        other => return Err(unexpected(other)),
    };
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(0);
    }
    for w in &s.warnings {
        eprintln!("hermes: warning: {w}");
    }
    println!("address    {}", s.address);
    println!("listen     {}", s.listen);
    println!(
        "version    {}  up {}",
        s.version,
        humantime::format_duration(Duration::from_secs(s.uptime_secs))
    );
    println!(
        "config     {}",
        s.config_file.as_deref().unwrap_or("(built-in defaults)")
    );
    println!("data dir   {}", s.data_dir);
    println!("log level  {}", s.log_level);
    for b in &s.bootstrap {
        println!(
            "bootstrap  {}{}",
            b.address,
            b.last_error
                .as_ref()
                .map_or(String::new(), |e| format!("  last error: {e}"))
        );
    }
    println!("neighbours {}", s.neighbours.len());
    for n in &s.neighbours {
        let rtt = n.rtt_us.map_or("-".to_string(), |us| {
            format!("{:.2} ms", us as f64 / 1000.0)
        });
        println!(
            "  {:<3} {:<22} up {:>6} s  rtt {:>9}  {}",
            n.direction, n.listen, n.age_secs, rtt, n.address
        );
    }
    let o = &s.outbox;
    println!(
        "outbox     queued {} / in flight {} / delivered {} / failed {}",
        o.queued, o.in_flight, o.delivered, o.failed
    );
    println!("inbox      {}", s.inbox);
    println!("drop list  {}", s.drop_list);
    let c = &s.counters;
    println!(
        "counters   relayed {} / dropped {} / retried {} / replays {}",
        c.relayed, c.dropped, c.retried, c.replays
    );
    Ok(0)
}

fn outbox(config: &Config, json: bool, command: Option<OutboxCommand>) -> Result<u8, Failure> {
    let mut client = connect(config)?;
    if let Some(OutboxCommand::Cancel { id }) = command {
        return match client.call(&Request::OutboxCancel { id: id.clone() })? {
            Response::Done => {
                println!("cancelled {}", id.trim());
                Ok(0)
            }
            other => Err(unexpected(other)),
        };
    }
    let (total, entries): (u64, Vec<OutboxItem>) = match client.call(&Request::Outbox {
        max: MAX_OUTBOX_LIST as u32,
    })? {
        Response::Outbox { total, entries } => (total, entries),
        other => return Err(unexpected(other)),
    };
    let mut out = std::io::stdout().lock();
    if json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
    } else {
        let now_ms = hermes::crypto::unix_now_ms();
        let now = now_ms / 1000;
        for e in &entries {
            let next = if e.next_try_ms <= now_ms {
                "now".to_string()
            } else {
                format!("in {} s", (e.next_try_ms - now_ms).div_ceil(1000))
            };
            writeln!(
                out,
                "{}  {:<9}  attempts {:<3}  next try {:<10}  expires in {:<12}  to {}",
                e.id,
                e.state,
                e.attempts,
                next,
                humantime::format_duration(Duration::from_secs(e.expires_at.saturating_sub(now)))
                    .to_string(),
                e.to
            )?;
        }
    }
    out.flush()?;
    if (entries.len() as u64) < total {
        eprintln!(
            "hermes: {} of {total} shown (the next due first)",
            entries.len()
        );
    }
    Ok(0)
}

fn peers(config: &Config, json: bool) -> Result<u8, Failure> {
    let peers: Vec<PeerStatus> = match connect(config)?.call(&Request::Peers)? {
        Response::Peers(p) => p,
        other => return Err(unexpected(other)),
    };
    let mut out = std::io::stdout().lock();
    if json {
        for p in &peers {
            writeln!(out, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(0);
    }
    let now = unix_now();
    let ago = |t: u64| format!("{} s ago", now.saturating_sub(t));
    for p in &peers {
        writeln!(
            out,
            "{:<22} {:<9} seen {:<12} linked {:<12} failures {:<2} {}{}",
            p.listen,
            if p.neighbour { "neighbour" } else { "" },
            ago(p.last_seen),
            p.last_success.map_or("never".to_string(), ago),
            p.failures,
            p.address,
            if p.relay { "" } else { " (no relay)" },
        )?;
    }
    Ok(0)
}

fn contacts(config: &Config, command: ContactsCommand) -> Result<u8, Failure> {
    let mut client = connect(config)?;
    let (list, json): (Vec<ContactInfo>, bool) = match command {
        ContactsCommand::Add { name, dest } => {
            match client.call(&Request::ContactAdd { name, dest })? {
                Response::Contacts(c) => (c, false),
                other => return Err(unexpected(other)),
            }
        }
        ContactsCommand::List { json } => match client.call(&Request::Contacts)? {
            Response::Contacts(c) => (c, json),
            other => return Err(unexpected(other)),
        },
        ContactsCommand::Remove { name } => {
            return match client.call(&Request::ContactRemove { name })? {
                Response::Done => Ok(0),
                other => Err(unexpected(other)),
            }
        }
    };
    let mut out = std::io::stdout().lock();
    for c in &list {
        if json {
            writeln!(out, "{}", serde_json::to_string(c)?)?;
        } else {
            writeln!(
                out,
                "{:<24} {:<4} {}{}",
                c.name,
                c.kind,
                c.address,
                c.dest
                    .as_ref()
                    .filter(|d| **d != c.name)
                    .map_or(String::new(), |d| format!(" (from {d})")),
            )?;
        }
    }
    Ok(0)
}
