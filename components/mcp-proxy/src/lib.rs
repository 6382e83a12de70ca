//! The mcp-proxy component: an MCP client for the web app, running inside the sandbox.
//!
//! The host (`capbridge:host/mcp`) keeps the registry of servers and their approvals, starts
//! the transports and moves whole messages; the MCP protocol is this component's:
//!
//! - The front exports (`list-servers`, `register-server`, `update-server`, `remove-server`,
//!   `connect-server`, `disconnect-server`, `server-capabilities`, `call-tool`) run in short-lived instances. They check the shape of their
//!   arguments (`check`), fill in defaults and call the host; `capabilities` and `call` hand a
//!   request of this component's own shape (`request`) to the connection's driver through
//!   `mcp::submit` and return its answer.
//! - `drive` is the driver: one long-lived instance per connection, started by the host. It
//!   loops on `mcp::next` and runs the protocol (`driver`): the handshake and version
//!   negotiation, request ids, pagination, timeouts, cancellation and progress.

// The generated glue passes flattened records as many parameters.
#![allow(clippy::too_many_arguments)]

mod check;
mod driver;
mod request;

wit_bindgen::generate!({ world: "mcp-proxy", generate_all });

use std::hash::{BuildHasher, RandomState};
use std::time::{Instant, SystemTime};

use capbridge::host::mcp::{self as host, HttpServer, Incoming, StdioServer};

use driver::{Driver, Failure, Flow, Input};
use request::Request;

struct McpProxy;

impl Guest for McpProxy {
    fn list_servers() -> Vec<Server> {
        host::servers()
    }

    fn register_server(
        id: String,
        name: Option<String>,
        transport: Transport,
    ) -> Result<Server, Error> {
        check_id(&id)?;
        if let Some(name) = &name {
            check::name(name).map_err(Error::InvalidArgument)?;
        }
        check_transport(&transport)?;
        let name = name.unwrap_or_else(|| id.clone());
        host::register(&id, &name, &transport)
    }

    fn update_server(
        id: String,
        name: Option<String>,
        transport: Option<Transport>,
    ) -> Result<Server, Error> {
        check_id(&id)?;
        if let Some(name) = &name {
            check::name(name).map_err(Error::InvalidArgument)?;
        }
        if let Some(transport) = &transport {
            check_transport(transport)?;
        }
        host::update(&id, name.as_deref(), transport.as_ref())
    }

    fn remove_server(id: String) -> Result<Server, Error> {
        check_id(&id)?;
        host::remove(&id)
    }

    fn connect_server(
        id: String,
        env: Option<Vec<(String, String)>>,
        headers: Option<Vec<(String, String)>>,
        timeout_ms: Option<u64>,
    ) -> Result<Server, Error> {
        check_id(&id)?;
        let env = env.unwrap_or_default();
        let headers = headers.unwrap_or_default();
        check::env_entries("env", &env).map_err(Error::InvalidArgument)?;
        check::header_entries("headers", &headers).map_err(Error::InvalidArgument)?;
        let timeout_ms = check::timeout(timeout_ms, check::DEFAULT_CONNECT_TIMEOUT_MS)
            .map_err(Error::InvalidArgument)?;
        host::connect(&id, &env, &headers, timeout_ms)
    }

    fn server_log(id: String) -> Result<String, Error> {
        check_id(&id)?;
        host::server_log(&id)
    }

    fn disconnect_server(id: String) -> Result<Server, Error> {
        check_id(&id)?;
        host::disconnect(&id)
    }

    fn server_capabilities(id: String) -> Result<String, Error> {
        check_id(&id)?;
        submit(
            &id,
            &Request::Capabilities {
                timeout_ms: check::CAPABILITIES_TIMEOUT_MS,
            },
        )
    }

    fn call_tool(
        server_id: String,
        tool: String,
        arguments: Option<String>,
        call_id: Option<String>,
        timeout_ms: Option<u64>,
    ) -> Result<String, Error> {
        check::id("serverId", &server_id).map_err(Error::InvalidArgument)?;
        check::tool(&tool).map_err(Error::InvalidArgument)?;
        let arguments = check::arguments(arguments.as_deref()).map_err(Error::InvalidArgument)?;
        if let Some(call_id) = &call_id {
            check::call_id(call_id).map_err(Error::InvalidArgument)?;
        }
        let timeout_ms = check::timeout(timeout_ms, check::DEFAULT_CALL_TIMEOUT_MS)
            .map_err(Error::InvalidArgument)?;
        let request = Request::Call {
            tool,
            arguments,
            call_id: call_id.unwrap_or_else(new_call_id),
            timeout_ms,
        };
        submit(&server_id, &request)
    }

    fn drive(server_id: String, handshake_timeout_ms: u64) {
        // `denied` unless this instance is the connection's driver.
        let Ok(first) = host::next(0) else {
            return;
        };
        let mut bindings = Bindings {
            server_id: server_id.clone(),
        };
        match &first {
            Incoming::Stop => return,
            Incoming::Closed(why) => {
                driver::Host::log(
                    &mut bindings,
                    &format!("handshake failed: the server is gone: {why}"),
                );
                return;
            }
            _ => {}
        }
        let mut driver = Driver::new(server_id).with_handshake(std::time::Duration::from_millis(
            handshake_timeout_ms.max(1),
        ));
        if driver.start(&mut bindings, Instant::now()) == Flow::Exit {
            return;
        }
        let mut incoming = Some(first);
        loop {
            let input = match incoming.take() {
                Some(input) => input,
                None => match host::next(driver.wait_ms(Instant::now())) {
                    Ok(input) => input,
                    Err(error) => {
                        let reason = format!("the host stopped the driver: {}", failure(error));
                        driver.shut_down(&mut bindings, &reason);
                        return;
                    }
                },
            };
            if driver.handle(&mut bindings, input.into(), Instant::now()) == Flow::Exit {
                return;
            }
        }
    }
}

/// Hands `request` to the driver and waits a little longer than the driver's own deadline.
fn submit(server_id: &str, request: &Request) -> Result<String, Error> {
    host::submit(
        server_id,
        &request.to_json(),
        request.timeout_ms() + check::SUBMIT_MARGIN_MS,
    )
}

/// `call-` and 16 hex digits (std's `RandomState` is seeded from the WASI random source).
fn new_call_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("call-{:016x}", RandomState::new().hash_one(nanos))
}

fn check_id(id: &str) -> Result<(), Error> {
    check::id("id", id).map_err(Error::InvalidArgument)
}

fn check_transport(transport: &Transport) -> Result<(), Error> {
    let fields = match transport {
        Transport::Stdio(StdioServer {
            program,
            args,
            cwd,
            env,
        }) => check::Transport::Stdio {
            program,
            args,
            cwd: cwd.as_deref(),
            env,
        },
        Transport::Http(HttpServer { url, headers }) => check::Transport::Http { url, headers },
    };
    check::transport(&fields).map_err(Error::InvalidArgument)
}

/// The driver's [`driver::Host`]: the `capbridge:host/mcp` calls, and stderr.
struct Bindings {
    server_id: String,
}

impl driver::Host for Bindings {
    fn send(&mut self, message: &str, protocol_version: Option<&str>) -> Result<(), Failure> {
        host::send(message, protocol_version).map_err(failure)
    }

    fn answer(&mut self, ticket: u64, outcome: Result<String, Failure>) {
        match outcome {
            Ok(answer) => host::answer(ticket, Ok(&answer)),
            Err(failure) => host::answer(ticket, Err(&error(failure))),
        }
    }

    fn progress(&mut self, ticket: u64, payload: &str) {
        host::progress(ticket, payload)
    }

    fn ready(&mut self, protocol_version: &str, server_info: &str) {
        host::ready(protocol_version, server_info)
    }

    fn tools_changed(&mut self) {
        host::tools_changed()
    }

    fn log(&mut self, line: &str) {
        eprintln!("mcp-proxy `{}`: {line}", self.server_id);
    }
}

impl From<Incoming> for Input {
    fn from(incoming: Incoming) -> Input {
        match incoming {
            Incoming::Message(message) => Input::Message(message),
            Incoming::Refused((id, why)) => Input::Refused(id, why),
            Incoming::Undelivered((id, why)) => Input::Undelivered(id, why),
            Incoming::Closed(why) => Input::Closed(why),
            Incoming::Request((ticket, request)) => Input::Request(ticket, request),
            Incoming::Abandoned(ticket) => Input::Abandoned(ticket),
            Incoming::Stop => Input::Stop,
            Incoming::Idle => Input::Idle,
        }
    }
}

fn failure(error: Error) -> Failure {
    match error {
        Error::Denied(t) => Failure::Denied(t),
        Error::InvalidArgument(t) => Failure::InvalidArgument(t),
        Error::Unavailable(t) => Failure::Unavailable(t),
        Error::NotFound(t) => Failure::NotFound(t),
        Error::Conflict(t) => Failure::Conflict(t),
        Error::TooLarge(t) => Failure::TooLarge(t),
    }
}

fn error(failure: Failure) -> Error {
    match failure {
        Failure::Denied(t) => Error::Denied(t),
        Failure::InvalidArgument(t) => Error::InvalidArgument(t),
        Failure::Unavailable(t) => Error::Unavailable(t),
        Failure::NotFound(t) => Error::NotFound(t),
        Failure::Conflict(t) => Error::Conflict(t),
        Failure::TooLarge(t) => Error::TooLarge(t),
    }
}

export!(McpProxy);
