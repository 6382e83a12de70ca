//! The driver: the MCP client of one connection, as a state machine over a [`Host`].
//!
//! It does not use the generated bindings (the `drive` export feeds it the host's `incoming`
//! values and carries out its calls), so it compiles and is tested on any target.
//!
//! - Handshake: `server/discover` first (protocol revision 2026-07-28, stateless: every later
//!   request carries the protocol version, client info and client capabilities in its `_meta`,
//!   and `send` gets the version for the `MCP-Protocol-Version` header). When the server
//!   answers discover with a JSON-RPC error, with an answer that does not offer 2026-07-28, or
//!   not within [`DISCOVER_PROBE`], or the host could not deliver it: the 2025-11-25 lifecycle
//!   (`initialize`, then `notifications/initialized`). Then `ready`.
//! - Requests to the server get integer ids from a counter; `pending` says what waits on each.
//!   Nothing blocks: every answer, timeout and cancellation is one step of the loop.
//! - Tickets (`submit`s) carry either a tool call or a capabilities listing, each with its
//!   deadline.

// Logging, roots and sampling types are deprecated by SEP-2577 but are what 2025-11-25 servers
// send.
#![allow(deprecated)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientCapabilities, ClientJsonRpcMessage, ClientNotification, ClientRequest, ClientResult,
    DiscoverRequest, DiscoverRequestParams, DiscoverResult, ErrorCode, ErrorData, GetMeta,
    Implementation, InitializeRequest, InitializeRequestParams, InitializeResult,
    InitializedNotification, JsonObject, JsonRpcNotification, JsonRpcRequest, ListPromptsRequest,
    ListPromptsResult, ListResourceTemplatesRequest, ListResourceTemplatesResult,
    ListResourcesRequest, ListResourcesResult, ListRootsResult, ListToolsRequest, ListToolsResult,
    MetaObject, NumberOrString, PaginatedRequestParams, ProgressToken, ProtocolVersion, RequestId,
    RequestMetaObject, ServerCapabilities, ServerNotification, ServerRequest,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::request::Request;

/// `clientInfo.name`.
pub const CLIENT_NAME: &str = "capbridge-mcp-proxy";
/// `clientInfo.version`.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The whole handshake: discover, and initialize after it when needed.
pub const HANDSHAKE: Duration = Duration::from_secs(30);
/// How long discover may go unanswered before the driver tries `initialize` (rmcp's
/// `DEFAULT_AUTO_DISCOVER_TIMEOUT`).
pub const DISCOVER_PROBE: Duration = Duration::from_secs(10);
/// Pages followed per list before giving up.
pub const MAX_PAGES: u32 = 1000;
/// Tickets in flight at once (and requests queued during the handshake).
pub const MAX_TICKETS: usize = 1024;
/// The longest wait handed to `next` when nothing is due.
const MAX_WAIT_MS: u32 = 60_000;
/// At most this much of a server's text goes into a log line or an error message.
const MAX_QUOTE_CHARS: usize = 1000;

/// An error as the host's `error` variant has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Denied(String),
    InvalidArgument(String),
    Unavailable(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
}

impl Failure {
    pub fn text(&self) -> &str {
        match self {
            Failure::Denied(t)
            | Failure::InvalidArgument(t)
            | Failure::Unavailable(t)
            | Failure::NotFound(t)
            | Failure::Conflict(t)
            | Failure::TooLarge(t) => t,
        }
    }

    /// The same kind of failure, its text prefixed.
    fn context(self, prefix: &str) -> Failure {
        let wrap = |t: String| format!("{prefix}: {t}");
        match self {
            Failure::Denied(t) => Failure::Denied(wrap(t)),
            Failure::InvalidArgument(t) => Failure::InvalidArgument(wrap(t)),
            Failure::Unavailable(t) => Failure::Unavailable(wrap(t)),
            Failure::NotFound(t) => Failure::NotFound(wrap(t)),
            Failure::Conflict(t) => Failure::Conflict(wrap(t)),
            Failure::TooLarge(t) => Failure::TooLarge(wrap(t)),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What the driver needs of the host (`capbridge:host/mcp`, and stderr).
pub trait Host {
    /// `mcp::send`.
    fn send(&mut self, message: &str, protocol_version: Option<&str>) -> Result<(), Failure>;
    /// `mcp::answer`.
    fn answer(&mut self, ticket: u64, outcome: Result<String, Failure>);
    /// `mcp::progress`.
    fn progress(&mut self, ticket: u64, payload: &str);
    /// `mcp::ready`.
    fn ready(&mut self, protocol_version: &str, server_info: &str);
    /// `mcp::tools-changed`.
    fn tools_changed(&mut self);
    /// One line on stderr (the host keeps it).
    fn log(&mut self, line: &str);
}

/// The host's `incoming`, on plain types.
#[derive(Debug)]
pub enum Input {
    Message(String),
    Refused(Option<String>, String),
    Undelivered(Option<String>, String),
    Closed(String),
    Request(u64, String),
    Abandoned(u64),
    Stop,
    Idle,
}

/// Whether `drive` goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Exit,
}

/// The handshake's step.
enum Handshake {
    /// `server/discover` sent as request `id`.
    Discover {
        id: i64,
        probe_deadline: Instant,
        deadline: Instant,
    },
    /// `initialize` sent as request `id`, after discover failed for `discover`.
    Initialize {
        id: i64,
        deadline: Instant,
        discover: String,
    },
}

/// What the handshake settled.
struct Session {
    version: ProtocolVersion,
    /// 2026-07-28 and later: every request carries the protocol version, client info and
    /// capabilities in its `_meta` (there was no `initialize`).
    inline_meta: bool,
    server_info: Option<Implementation>,
    capabilities: ServerCapabilities,
    instructions: Option<String>,
}

/// What waits on a request id.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    Call(u64),
    Page(u64, List),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Tools,
    Resources,
    ResourceTemplates,
    Prompts,
}

impl List {
    const ALL: [List; 4] = [
        List::Tools,
        List::Resources,
        List::ResourceTemplates,
        List::Prompts,
    ];

    fn method(self) -> &'static str {
        match self {
            List::Tools => "tools/list",
            List::Resources => "resources/list",
            List::ResourceTemplates => "resources/templates/list",
            List::Prompts => "prompts/list",
        }
    }

    /// The field of the result (and of the capabilities answer) holding the items.
    fn field(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Resources => "resources",
            List::ResourceTemplates => "resourceTemplates",
            List::Prompts => "prompts",
        }
    }
}

enum Ticket {
    Call(CallState),
    Capabilities(CapabilitiesState),
}

struct CallState {
    request_id: i64,
    call_id: String,
    tool: String,
    token: String,
    deadline: Instant,
    timeout_ms: u64,
}

struct CapabilitiesState {
    deadline: Instant,
    timeout_ms: u64,
    lists: Vec<ListState>,
}

struct ListState {
    list: List,
    items: Vec<Value>,
    pages: u32,
    in_flight: Option<i64>,
    done: bool,
    cursors: HashSet<String>,
}

/// The MCP client of one connection.
pub struct Driver {
    server_id: String,
    next_id: i64,
    handshake: Option<Handshake>,
    session: Option<Session>,
    pending: HashMap<i64, Waiter>,
    tickets: HashMap<u64, Ticket>,
    /// Progress token → ticket of the call that carries it.
    tokens: HashMap<String, u64>,
    /// Requests that arrived before the handshake was done.
    queued: Vec<(u64, String)>,
    /// How long the handshake may take.
    handshake_limit: Duration,
}

impl Driver {
    /// How long the handshake may take (default [`HANDSHAKE`]; `connect`'s timeout).
    pub fn with_handshake(mut self, limit: Duration) -> Driver {
        self.handshake_limit = limit;
        self
    }

    pub fn new(server_id: String) -> Driver {
        Driver {
            server_id,
            next_id: 0,
            handshake: None,
            session: None,
            pending: HashMap::new(),
            tickets: HashMap::new(),
            tokens: HashMap::new(),
            queued: Vec::new(),
            handshake_limit: HANDSHAKE,
        }
    }

    /// Starts the handshake: sends `server/discover`.
    pub fn start(&mut self, host: &mut impl Host, now: Instant) -> Flow {
        let id = self.allocate_id();
        let mut discover = DiscoverRequest::new(DiscoverRequestParams {});
        discover
            .extensions
            .insert(client_meta(ProtocolVersion::V_2026_07_28));
        self.handshake = Some(Handshake::Discover {
            id,
            probe_deadline: now + DISCOVER_PROBE.min(self.handshake_limit),
            deadline: now + self.handshake_limit,
        });
        let message = encode(&ClientJsonRpcMessage::request(
            ClientRequest::DiscoverRequest(discover),
            RequestId::Number(id),
        ));
        match host.send(&message, Some(ProtocolVersion::V_2026_07_28.as_str())) {
            Ok(()) => Flow::Continue,
            Err(failure) => self.fall_back(host, format!("it could not be sent: {failure}")),
        }
    }

    /// One input, then whatever came due.
    pub fn handle(&mut self, host: &mut impl Host, input: Input, now: Instant) -> Flow {
        let flow = match input {
            Input::Message(text) => self.on_message(host, &text, now),
            Input::Refused(id, why) => {
                let failure = if mentions_size(&why) {
                    Failure::TooLarge(format!("the server's answer was refused: {why}"))
                } else {
                    Failure::Unavailable(format!("the server's answer was refused: {why}"))
                };
                self.on_lost(host, id.as_deref(), failure, &why)
            }
            Input::Undelivered(id, why) => {
                let failure = Failure::Unavailable(format!(
                    "the request could not be delivered to server `{}`: {why}",
                    self.server_id
                ));
                self.on_lost(host, id.as_deref(), failure, &why)
            }
            Input::Closed(why) => {
                let reason = format!("server `{}` is gone: {why}", self.server_id);
                if self.session.is_none() {
                    host.log(&format!("handshake failed: {reason}"));
                }
                self.answer_all(host, &reason);
                return Flow::Exit;
            }
            Input::Request(ticket, request) => {
                self.on_request(host, ticket, request, now);
                Flow::Continue
            }
            Input::Abandoned(ticket) => {
                self.on_abandoned(host, ticket);
                Flow::Continue
            }
            Input::Stop => {
                let reason = format!("server `{}` disconnected", self.server_id);
                self.answer_all(host, &reason);
                return Flow::Exit;
            }
            Input::Idle => Flow::Continue,
        };
        if flow == Flow::Exit {
            return flow;
        }
        self.expire(host, now)
    }

    /// How long `next` may wait: until the nearest deadline, at most a minute.
    pub fn wait_ms(&self, now: Instant) -> u32 {
        let nearest = self.deadlines().min();
        match nearest {
            None => MAX_WAIT_MS,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(now);
                // Rounded up, so that the deadline has passed when `next` returns.
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(u128::from(MAX_WAIT_MS)) as u32
            }
        }
    }

    /// Ends the session for a reason of the driver's own (the host's `next` failed).
    pub fn shut_down(&mut self, host: &mut impl Host, reason: &str) {
        if self.session.is_none() {
            host.log(&format!("handshake failed: {reason}"));
        }
        self.answer_all(host, reason);
    }

    fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let handshake = match &self.handshake {
            Some(Handshake::Discover {
                probe_deadline,
                deadline,
                ..
            }) => Some(*probe_deadline.min(deadline)),
            Some(Handshake::Initialize { deadline, .. }) => Some(*deadline),
            None => None,
        };
        let tickets = self.tickets.values().map(|ticket| match ticket {
            Ticket::Call(call) => call.deadline,
            Ticket::Capabilities(caps) => caps.deadline,
        });
        handshake.into_iter().chain(tickets)
    }

    fn allocate_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// The `protocol-version` to hand `send` now.
    fn wire_version(&self) -> Option<&str> {
        match (&self.session, &self.handshake) {
            (Some(session), _) => Some(session.version.as_str()),
            (None, Some(Handshake::Discover { .. })) => {
                Some(ProtocolVersion::V_2026_07_28.as_str())
            }
            (None, _) => None,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Handshake

    /// Discover did not work out (`why`): the 2025-11-25 lifecycle.
    fn fall_back(&mut self, host: &mut impl Host, why: String) -> Flow {
        let deadline = match self.handshake.take() {
            Some(Handshake::Discover { deadline, .. }) => deadline,
            other => {
                self.handshake = other;
                return Flow::Continue;
            }
        };
        let discover = format!("server/discover: {why}");
        host.log(&format!("{discover}; trying initialize (2025-11-25)"));
        let id = self.allocate_id();
        let params = InitializeRequestParams::new(ClientCapabilities::default(), client_info())
            .with_protocol_version(ProtocolVersion::V_2025_11_25);
        let message = encode(&ClientJsonRpcMessage::request(
            ClientRequest::InitializeRequest(InitializeRequest::new(params)),
            RequestId::Number(id),
        ));
        self.handshake = Some(Handshake::Initialize {
            id,
            deadline,
            discover,
        });
        // No `MCP-Protocol-Version` on `initialize`: the version is what it negotiates.
        match host.send(&message, None) {
            Ok(()) => Flow::Continue,
            Err(failure) => {
                self.fail_handshake(host, format!("initialize could not be sent: {failure}"))
            }
        }
    }

    fn fail_handshake(&mut self, host: &mut impl Host, why: String) -> Flow {
        let why = match self.handshake.take() {
            Some(Handshake::Initialize { discover, .. }) => {
                format!("{why} (before it, {discover})")
            }
            _ => why,
        };
        host.log(&format!("handshake failed: {why}"));
        let reason = format!("server `{}` failed to connect: {why}", self.server_id);
        self.answer_all(host, &reason);
        Flow::Exit
    }

    fn on_handshake_answer(
        &mut self,
        host: &mut impl Host,
        outcome: Result<&RawValue, ErrorData>,
        now: Instant,
    ) -> Flow {
        match &self.handshake {
            Some(Handshake::Discover { .. }) => match outcome {
                Err(error) => {
                    self.fall_back(host, format!("the server answered {}", describe(&error)))
                }
                Ok(raw) => match read_discover(raw, host) {
                    Ok(discovered)
                        if discovered
                            .supported_versions
                            .contains(&ProtocolVersion::V_2026_07_28) =>
                    {
                        let session = Session {
                            version: ProtocolVersion::V_2026_07_28,
                            inline_meta: true,
                            server_info: discovered.server_info,
                            capabilities: discovered.capabilities,
                            instructions: discovered.instructions,
                        };
                        self.connected(host, session, now)
                    }
                    Ok(discovered) => {
                        let offered: Vec<&str> = discovered
                            .supported_versions
                            .iter()
                            .map(ProtocolVersion::as_str)
                            .collect();
                        self.fall_back(
                            host,
                            format!("the server offers only {offered:?}, not 2026-07-28"),
                        )
                    }
                    Err(error) => self.fall_back(host, format!("unreadable answer: {error}")),
                },
            },
            Some(Handshake::Initialize { .. }) => match outcome {
                Err(error) => self.fail_handshake(
                    host,
                    format!("initialize: the server answered {}", describe(&error)),
                ),
                Ok(raw) => match serde_json::from_str::<InitializeResult>(raw.get()) {
                    Err(error) => {
                        self.fail_handshake(host, format!("initialize: unreadable answer: {error}"))
                    }
                    Ok(result)
                        if !ProtocolVersion::KNOWN_VERSIONS.contains(&result.protocol_version) =>
                    {
                        let version = quote(result.protocol_version.as_str());
                        self.fail_handshake(
                            host,
                            format!("initialize: the server speaks protocol version {version}, which capbridge does not"),
                        )
                    }
                    Ok(result) => {
                        let version = result.protocol_version;
                        let initialized = ClientJsonRpcMessage::notification(
                            ClientNotification::InitializedNotification(InitializedNotification {
                                method: Default::default(),
                                extensions: Default::default(),
                            }),
                        );
                        if let Err(failure) =
                            host.send(&encode(&initialized), Some(version.as_str()))
                        {
                            return self.fail_handshake(
                                host,
                                format!("notifications/initialized could not be sent: {failure}"),
                            );
                        }
                        let session = Session {
                            inline_meta: !version.has_initialize(),
                            version,
                            server_info: Some(result.server_info),
                            capabilities: result.capabilities,
                            instructions: result.instructions,
                        };
                        self.connected(host, session, now)
                    }
                },
            },
            None => Flow::Continue,
        }
    }

    fn connected(&mut self, host: &mut impl Host, session: Session, now: Instant) -> Flow {
        self.handshake = None;
        let info = match &session.server_info {
            Some(info) => serde_json::to_string(info).unwrap_or_else(|_| "{}".into()),
            None => "{}".into(),
        };
        host.ready(session.version.as_str(), &info);
        self.session = Some(session);
        for (ticket, request) in std::mem::take(&mut self.queued) {
            self.on_request(host, ticket, request, now);
        }
        Flow::Continue
    }

    // ---------------------------------------------------------------------------------------
    // Tickets

    fn on_request(&mut self, host: &mut impl Host, ticket: u64, request: String, now: Instant) {
        if self.tickets.len() + self.queued.len() >= MAX_TICKETS {
            host.answer(
                ticket,
                Err(Failure::Unavailable(format!(
                    "server `{}` has {MAX_TICKETS} requests in flight already",
                    self.server_id
                ))),
            );
            return;
        }
        if self.session.is_none() {
            self.queued.push((ticket, request));
            return;
        }
        let request = match serde_json::from_str::<Request>(&request) {
            Ok(request) => request,
            Err(error) => {
                host.answer(
                    ticket,
                    Err(Failure::InvalidArgument(format!("request: {error}"))),
                );
                return;
            }
        };
        let timeout_ms = request.timeout_ms().clamp(1, crate::check::MAX_TIMEOUT_MS);
        let deadline = now + Duration::from_millis(timeout_ms);
        match request {
            Request::Capabilities { .. } => self.start_listing(host, ticket, deadline, timeout_ms),
            Request::Call {
                tool,
                arguments,
                call_id,
                ..
            } => self.start_call(host, ticket, tool, arguments, call_id, deadline, timeout_ms),
        }
    }

    fn start_call(
        &mut self,
        host: &mut impl Host,
        ticket: u64,
        tool: String,
        arguments: JsonObject,
        call_id: String,
        deadline: Instant,
        timeout_ms: u64,
    ) {
        let id = self.allocate_id();
        // A progress token must be unique among the requests in flight.
        let token = if self.tokens.contains_key(&call_id) {
            format!("{call_id}#{id}")
        } else {
            call_id.clone()
        };
        let params = CallToolRequestParams::new(tool.clone()).with_arguments(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        if let Err(failure) = self.send_request(host, id, request, Some(&token)) {
            host.answer(
                ticket,
                Err(failure.context(&format!("tools/call `{tool}`"))),
            );
            return;
        }
        self.pending.insert(id, Waiter::Call(ticket));
        self.tokens.insert(token.clone(), ticket);
        self.tickets.insert(
            ticket,
            Ticket::Call(CallState {
                request_id: id,
                call_id,
                tool,
                token,
                deadline,
                timeout_ms,
            }),
        );
    }

    fn start_listing(
        &mut self,
        host: &mut impl Host,
        ticket: u64,
        deadline: Instant,
        timeout_ms: u64,
    ) {
        let Some(session) = &self.session else { return };
        let capabilities = &session.capabilities;
        let lists = List::ALL
            .into_iter()
            .filter(|list| match list {
                List::Tools => capabilities.tools.is_some(),
                List::Resources | List::ResourceTemplates => capabilities.resources.is_some(),
                List::Prompts => capabilities.prompts.is_some(),
            })
            .map(|list| ListState {
                list,
                items: Vec::new(),
                pages: 0,
                in_flight: None,
                done: false,
                cursors: HashSet::new(),
            })
            .collect();
        let mut state = CapabilitiesState {
            deadline,
            timeout_ms,
            lists,
        };
        for index in 0..state.lists.len() {
            let list = state.lists[index].list;
            match self.send_page(host, ticket, list, None) {
                Ok(id) => state.lists[index].in_flight = Some(id),
                Err(failure) => {
                    self.cancel_pages(host, &state, "the listing failed");
                    host.answer(ticket, Err(failure.context(list.method())));
                    return;
                }
            }
        }
        self.settle_listing(host, ticket, state);
    }

    fn send_page(
        &mut self,
        host: &mut impl Host,
        ticket: u64,
        list: List,
        cursor: Option<String>,
    ) -> Result<i64, Failure> {
        let id = self.allocate_id();
        let params = PaginatedRequestParams::default().with_cursor(cursor);
        let request = match list {
            List::Tools => ClientRequest::ListToolsRequest(ListToolsRequest::with_param(params)),
            List::Resources => {
                ClientRequest::ListResourcesRequest(ListResourcesRequest::with_param(params))
            }
            List::ResourceTemplates => ClientRequest::ListResourceTemplatesRequest(
                ListResourceTemplatesRequest::with_param(params),
            ),
            List::Prompts => {
                ClientRequest::ListPromptsRequest(ListPromptsRequest::with_param(params))
            }
        };
        self.send_request(host, id, request, None)?;
        self.pending.insert(id, Waiter::Page(ticket, list));
        Ok(id)
    }

    /// Answers a listing when every list is done, else keeps it.
    fn settle_listing(&mut self, host: &mut impl Host, ticket: u64, state: CapabilitiesState) {
        if !state.lists.iter().all(|list| list.done) {
            self.tickets.insert(ticket, Ticket::Capabilities(state));
            return;
        }
        let Some(session) = &self.session else { return };
        let mut answer = Map::new();
        answer.insert("serverId".into(), self.server_id.clone().into());
        answer.insert("protocolVersion".into(), session.version.as_str().into());
        answer.insert("serverInfo".into(), to_value(&session.server_info));
        answer.insert("capabilities".into(), to_value(&session.capabilities));
        answer.insert("instructions".into(), to_value(&session.instructions));
        for list in List::ALL {
            answer.insert(list.field().into(), Value::Array(Vec::new()));
        }
        for list in state.lists {
            answer.insert(list.list.field().into(), Value::Array(list.items));
        }
        host.answer(ticket, Ok(Value::Object(answer).to_string()));
    }

    fn on_page(
        &mut self,
        host: &mut impl Host,
        ticket: u64,
        list: List,
        outcome: Result<&RawValue, ErrorData>,
    ) {
        let Some(Ticket::Capabilities(mut state)) = self.tickets.remove(&ticket) else {
            return;
        };
        let Some(index) = state.lists.iter().position(|l| l.list == list) else {
            return;
        };
        state.lists[index].in_flight = None;
        let page = match outcome {
            // Announced but not served (a server with resources but no templates): nothing.
            Err(error) if error.code == ErrorCode::METHOD_NOT_FOUND => Ok((Vec::new(), None)),
            Err(error) => Err(Failure::Unavailable(format!(
                "server `{}` answered {} with {}",
                self.server_id,
                list.method(),
                describe(&error)
            ))),
            Ok(raw) => parse_page(list, raw, host).map_err(|error| {
                Failure::Unavailable(format!(
                    "server `{}` sent an unreadable {} answer: {error}",
                    self.server_id,
                    list.method()
                ))
            }),
        };
        let next = page.and_then(|(items, cursor)| {
            let entry = &mut state.lists[index];
            entry.items.extend(items);
            entry.pages += 1;
            match cursor.filter(|cursor| !cursor.is_empty()) {
                None => {
                    entry.done = true;
                    Ok(None)
                }
                Some(_) if entry.pages >= MAX_PAGES => Err(Failure::TooLarge(format!(
                    "server `{}` has more than {MAX_PAGES} pages of {}",
                    self.server_id,
                    list.method()
                ))),
                Some(cursor) if !entry.cursors.insert(cursor.clone()) => {
                    Err(Failure::Unavailable(format!(
                        "server `{}` sent the same {} cursor twice",
                        self.server_id,
                        list.method()
                    )))
                }
                Some(cursor) => Ok(Some(cursor)),
            }
        });
        let result = next.and_then(|cursor| match cursor {
            None => Ok(()),
            Some(cursor) => self
                .send_page(host, ticket, list, Some(cursor))
                .map(|id| state.lists[index].in_flight = Some(id))
                .map_err(|failure| failure.context(list.method())),
        });
        match result {
            Ok(()) => self.settle_listing(host, ticket, state),
            Err(failure) => {
                self.cancel_pages(host, &state, "the listing failed");
                host.answer(ticket, Err(failure));
            }
        }
    }

    /// Cancels the page requests of a listing still in flight.
    fn cancel_pages(&mut self, host: &mut impl Host, state: &CapabilitiesState, reason: &str) {
        for id in state.lists.iter().filter_map(|list| list.in_flight) {
            self.pending.remove(&id);
            self.send_cancel(host, id, reason);
        }
    }

    fn on_call_answer(
        &mut self,
        host: &mut impl Host,
        ticket: u64,
        outcome: Result<&RawValue, ErrorData>,
    ) {
        let Some(Ticket::Call(call)) = self.tickets.remove(&ticket) else {
            return;
        };
        self.tokens.remove(&call.token);
        let answer = match outcome {
            Err(error) => {
                let text = format!(
                    "server `{}` answered tools/call `{}` with {}",
                    self.server_id,
                    call.tool,
                    describe(&error)
                );
                Err(if error.code == ErrorCode::INVALID_PARAMS {
                    Failure::InvalidArgument(text)
                } else {
                    Failure::Unavailable(text)
                })
            }
            Ok(raw) => self.call_result(host, &call, raw),
        };
        host.answer(ticket, answer);
    }

    /// `{"callId","serverId","tool","result"}` with the server's `CallToolResult` as it came.
    fn call_result(
        &self,
        host: &mut impl Host,
        call: &CallState,
        raw: &RawValue,
    ) -> Result<String, Failure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Shape {
            result_type: Option<String>,
        }
        let shape = match serde_json::from_str::<Shape>(raw.get()) {
            Ok(shape) => shape,
            Err(_) => {
                return Err(Failure::Unavailable(format!(
                    "server `{}` answered tools/call `{}` with something that is not a CallToolResult object",
                    self.server_id, call.tool
                )))
            }
        };
        match shape.result_type.as_deref() {
            None | Some("complete") => {}
            Some("input_required") => {
                return Err(Failure::Unavailable(format!(
                    "server `{}` asked for more input (elicitation, sampling or roots) to run tool `{}`; capbridge does not support that",
                    self.server_id, call.tool
                )))
            }
            Some(other) => {
                return Err(Failure::Unavailable(format!(
                    "server `{}` answered tools/call `{}` with a result of type {}, which capbridge does not support",
                    self.server_id,
                    call.tool,
                    quote(other)
                )))
            }
        }
        // Checked against rmcp's type; a result it cannot read (an unknown content type, an odd
        // annotation) is still passed on as it came, and the mismatch logged.
        if let Err(error) = serde_json::from_str::<rmcp::model::CallToolResult>(raw.get()) {
            host.log(&format!(
                "tools/call `{}`: the result does not read as a CallToolResult ({error}); passed on as it is",
                call.tool
            ));
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer<'a> {
            call_id: &'a str,
            server_id: &'a str,
            tool: &'a str,
            result: &'a RawValue,
        }
        serde_json::to_string(&Answer {
            call_id: &call.call_id,
            server_id: &self.server_id,
            tool: &call.tool,
            result: raw,
        })
        .map_err(|error| Failure::Unavailable(format!("the answer could not be written: {error}")))
    }

    fn on_abandoned(&mut self, host: &mut impl Host, ticket: u64) {
        self.queued.retain(|(queued, _)| *queued != ticket);
        match self.tickets.remove(&ticket) {
            Some(Ticket::Call(call)) => {
                self.tokens.remove(&call.token);
                self.pending.remove(&call.request_id);
                self.send_cancel(host, call.request_id, "the caller went away");
            }
            Some(Ticket::Capabilities(state)) => {
                self.cancel_pages(host, &state, "the caller went away");
            }
            None => {}
        }
    }

    /// Answers every waiting ticket (and queued request) with `unavailable(reason)`.
    fn answer_all(&mut self, host: &mut impl Host, reason: &str) {
        let mut tickets: Vec<u64> = self.tickets.drain().map(|(ticket, _)| ticket).collect();
        tickets.extend(self.queued.drain(..).map(|(ticket, _)| ticket));
        tickets.sort_unstable();
        for ticket in tickets {
            host.answer(ticket, Err(Failure::Unavailable(reason.to_string())));
        }
        self.pending.clear();
        self.tokens.clear();
    }

    /// Handshake steps and tickets whose deadline has passed.
    fn expire(&mut self, host: &mut impl Host, now: Instant) -> Flow {
        match &self.handshake {
            Some(Handshake::Discover { probe_deadline, .. }) if now >= *probe_deadline => {
                let ms = DISCOVER_PROBE.min(self.handshake_limit).as_millis();
                if self.fall_back(host, format!("no answer within {ms} ms")) == Flow::Exit {
                    return Flow::Exit;
                }
            }
            Some(Handshake::Initialize { deadline, .. }) if now >= *deadline => {
                let ms = self.handshake_limit.as_millis();
                return self.fail_handshake(
                    host,
                    format!("initialize: no answer; the handshake may take at most {ms} ms"),
                );
            }
            _ => {}
        }
        let mut due: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, ticket)| match ticket {
                Ticket::Call(call) => call.deadline <= now,
                Ticket::Capabilities(caps) => caps.deadline <= now,
            })
            .map(|(ticket, _)| *ticket)
            .collect();
        due.sort_unstable();
        for ticket in due {
            match self.tickets.remove(&ticket) {
                Some(Ticket::Call(call)) => {
                    self.tokens.remove(&call.token);
                    self.pending.remove(&call.request_id);
                    let text = format!(
                        "tool `{}` of server `{}` timed out after {} ms; the server was told to cancel",
                        call.tool, self.server_id, call.timeout_ms
                    );
                    self.send_cancel(
                        host,
                        call.request_id,
                        &format!("timed out after {} ms", call.timeout_ms),
                    );
                    host.answer(ticket, Err(Failure::Unavailable(text)));
                }
                Some(Ticket::Capabilities(state)) => {
                    let reason = format!("timed out after {} ms", state.timeout_ms);
                    self.cancel_pages(host, &state, &reason);
                    host.answer(
                        ticket,
                        Err(Failure::Unavailable(format!(
                            "listing the capabilities of server `{}` {reason}; the server was told to cancel",
                            self.server_id
                        ))),
                    );
                }
                None => {}
            }
        }
        Flow::Continue
    }

    /// A request whose message was refused or not delivered.
    fn on_lost(
        &mut self,
        host: &mut impl Host,
        id: Option<&str>,
        failure: Failure,
        why: &str,
    ) -> Flow {
        let id = id.and_then(|id| serde_json::from_str::<RequestId>(id).ok());
        let Some(id) = id.as_ref().and_then(request_number) else {
            host.log(&format!("a message was lost: {why}"));
            return Flow::Continue;
        };
        match &self.handshake {
            Some(Handshake::Discover { id: discover, .. }) if *discover == id => {
                return self.fall_back(host, failure.text().to_string());
            }
            Some(Handshake::Initialize { id: initialize, .. }) if *initialize == id => {
                return self.fail_handshake(host, format!("initialize: {failure}"));
            }
            _ => {}
        }
        match self.pending.remove(&id) {
            Some(Waiter::Call(ticket)) => {
                if let Some(Ticket::Call(call)) = self.tickets.remove(&ticket) {
                    self.tokens.remove(&call.token);
                    let prefix = format!("tools/call `{}`", call.tool);
                    host.answer(ticket, Err(failure.context(&prefix)));
                }
            }
            Some(Waiter::Page(ticket, list)) => {
                if let Some(Ticket::Capabilities(mut state)) = self.tickets.remove(&ticket) {
                    for entry in &mut state.lists {
                        if entry.in_flight == Some(id) {
                            entry.in_flight = None;
                        }
                    }
                    self.cancel_pages(host, &state, "the listing failed");
                    host.answer(ticket, Err(failure.context(list.method())));
                }
            }
            None => host.log(&format!("the message with id {id} was lost: {why}")),
        }
        Flow::Continue
    }

    // ---------------------------------------------------------------------------------------
    // Messages from the server

    fn on_message(&mut self, host: &mut impl Host, text: &str, now: Instant) -> Flow {
        if text.trim_start().starts_with('[') {
            // A JSON-RPC batch (2025-03-26 allowed them).
            let batch = match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(batch) => batch,
                Err(error) => {
                    host.log(&format!("an unreadable message from the server: {error}"));
                    return Flow::Continue;
                }
            };
            for message in batch {
                if self.on_one_message(host, message.get(), now) == Flow::Exit {
                    return Flow::Exit;
                }
            }
            return Flow::Continue;
        }
        self.on_one_message(host, text, now)
    }

    fn on_one_message(&mut self, host: &mut impl Host, text: &str, now: Instant) -> Flow {
        let envelope = match serde_json::from_str::<Envelope>(text) {
            Ok(envelope) => envelope,
            Err(error) => {
                host.log(&format!("an unreadable message from the server: {error}"));
                return Flow::Continue;
            }
        };
        match (
            envelope.method.is_some(),
            envelope.id,
            envelope.result,
            envelope.error,
        ) {
            (true, Some(_), _, _) => {
                self.on_server_request(host, text);
                Flow::Continue
            }
            (true, None, _, _) => {
                self.on_notification(host, text);
                Flow::Continue
            }
            (false, id, Some(result), None) => {
                let id = id.and_then(|raw| serde_json::from_str::<RequestId>(raw.get()).ok());
                match id.as_ref().and_then(request_number) {
                    Some(id) => self.on_answer(host, Some(id), Ok(result), now),
                    None => {
                        host.log("a result without a usable id from the server: ignored");
                        Flow::Continue
                    }
                }
            }
            (false, id, None, Some(error)) => {
                let id = id.and_then(|raw| serde_json::from_str::<RequestId>(raw.get()).ok());
                let error = serde_json::from_str::<ErrorData>(error.get()).unwrap_or_else(|_| {
                    ErrorData::new(
                        ErrorCode::INTERNAL_ERROR,
                        format!("malformed error {}", quote(error.get())),
                        None,
                    )
                });
                self.on_answer(host, id.as_ref().and_then(request_number), Err(error), now)
            }
            (false, Some(id), None, None) => {
                let id = serde_json::from_str::<RequestId>(id.get()).ok();
                let error = ErrorData::new(
                    ErrorCode::INTERNAL_ERROR,
                    "the answer has neither a result nor an error",
                    None,
                );
                self.on_answer(host, id.as_ref().and_then(request_number), Err(error), now)
            }
            _ => {
                host.log("a message from the server that is not JSON-RPC: ignored");
                Flow::Continue
            }
        }
    }

    /// A result or error for request `id` (none: an error the server could not tie to a request).
    fn on_answer(
        &mut self,
        host: &mut impl Host,
        id: Option<i64>,
        outcome: Result<&RawValue, ErrorData>,
        now: Instant,
    ) -> Flow {
        let handshake_id = match &self.handshake {
            Some(Handshake::Discover { id, .. }) | Some(Handshake::Initialize { id, .. }) => {
                Some(*id)
            }
            None => None,
        };
        // An error without an id during the handshake answers the handshake's request (rmcp's
        // `expect_response` reads it the same way).
        if handshake_id.is_some() && (id == handshake_id || (id.is_none() && outcome.is_err())) {
            return self.on_handshake_answer(host, outcome, now);
        }
        let Some(id) = id else {
            if let Err(error) = outcome {
                host.log(&format!(
                    "the server sent {} without an id",
                    describe(&error)
                ));
            }
            return Flow::Continue;
        };
        match self.pending.remove(&id) {
            Some(Waiter::Call(ticket)) => self.on_call_answer(host, ticket, outcome),
            Some(Waiter::Page(ticket, list)) => self.on_page(host, ticket, list, outcome),
            // Late (timed out, abandoned, or a discover after the fallback): nobody waits.
            None => {}
        }
        Flow::Continue
    }

    fn on_server_request(&mut self, host: &mut impl Host, text: &str) {
        let (id, response) = match serde_json::from_str::<JsonRpcRequest<ServerRequest>>(text) {
            Ok(request) => {
                let response = match &request.request {
                    ServerRequest::PingRequest(_) => Ok(ClientResult::empty(())),
                    ServerRequest::ListRootsRequest(_) => Ok(ClientResult::ListRootsResult(
                        ListRootsResult::new(Vec::new()),
                    )),
                    ServerRequest::CreateMessageRequest(_) => {
                        Err("sampling/createMessage".to_string())
                    }
                    ServerRequest::ElicitRequest(_) => Err("elicitation/create".to_string()),
                    ServerRequest::CustomRequest(custom) => Err(custom.method.clone()),
                    _ => Err("this request".to_string()),
                };
                (request.id, response)
            }
            Err(error) => {
                // Not a request rmcp reads: answer by its id and method, when they are there.
                #[derive(Deserialize)]
                struct Bare {
                    id: RequestId,
                    method: String,
                }
                match serde_json::from_str::<Bare>(text) {
                    Ok(bare) => (bare.id, Err(bare.method)),
                    Err(_) => {
                        host.log(&format!("an unreadable request from the server: {error}"));
                        return;
                    }
                }
            }
        };
        let message = match response {
            Ok(result) => ClientJsonRpcMessage::response(result, id),
            Err(method) => ClientJsonRpcMessage::error(
                ErrorData::new(
                    ErrorCode::METHOD_NOT_FOUND,
                    format!("{} is not supported by capbridge", quote(&method)),
                    None,
                ),
                Some(id),
            ),
        };
        let version = self.wire_version().map(str::to_owned);
        if let Err(failure) = host.send(&encode(&message), version.as_deref()) {
            host.log(&format!(
                "the answer to a server request could not be sent: {failure}"
            ));
        }
    }

    fn on_notification(&mut self, host: &mut impl Host, text: &str) {
        let notification =
            match serde_json::from_str::<JsonRpcNotification<ServerNotification>>(text) {
                Ok(notification) => notification.notification,
                Err(error) => {
                    host.log(&format!(
                        "an unreadable notification from the server: {error}"
                    ));
                    return;
                }
            };
        match notification {
            ServerNotification::ProgressNotification(progress) => {
                let params = progress.params;
                let ProgressToken(NumberOrString::String(token)) = &params.progress_token else {
                    return;
                };
                let Some(&ticket) = self.tokens.get(token.as_ref()) else {
                    return;
                };
                let Some(Ticket::Call(call)) = self.tickets.get(&ticket) else {
                    return;
                };
                let payload = serde_json::json!({
                    "callId": call.call_id,
                    "serverId": self.server_id,
                    "tool": call.tool,
                    "progress": params.progress,
                    "total": params.total,
                    "message": params.message,
                });
                host.progress(ticket, &payload.to_string());
            }
            ServerNotification::ToolListChangedNotification(_) => host.tools_changed(),
            ServerNotification::LoggingMessageNotification(message) => {
                let params = message.params;
                let level = serde_json::to_value(params.level)
                    .ok()
                    .and_then(|level| level.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let logger = params
                    .logger
                    .map(|logger| format!(" {}", one_line(&logger)))
                    .unwrap_or_default();
                let data = match &params.data {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                host.log(&format!(
                    "server log [{level}]{logger}: {}",
                    one_line(&data)
                ));
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------------------------------
    // Sending

    /// Sends request `id`; on 2026-07-28 its `_meta` carries the protocol version, client info
    /// and capabilities (rmcp's `Peer::send_request_with_option_and_subscription`).
    fn send_request(
        &mut self,
        host: &mut impl Host,
        id: i64,
        mut request: ClientRequest,
        progress_token: Option<&str>,
    ) -> Result<(), Failure> {
        let Some(session) = &self.session else {
            return Err(Failure::Unavailable("the handshake is not done".into()));
        };
        if session.inline_meta {
            request
                .get_meta_mut()
                .extend(client_meta(session.version.clone()));
        }
        if let Some(token) = progress_token {
            request
                .get_meta_mut()
                .set_progress_token(ProgressToken(NumberOrString::String(token.into())));
        }
        let message = serde_json::to_string(&ClientJsonRpcMessage::request(
            request,
            RequestId::Number(id),
        ))
        .map_err(|error| {
            Failure::InvalidArgument(format!("the request could not be written: {error}"))
        })?;
        host.send(&message, Some(session.version.as_str()))
    }

    /// `notifications/cancelled` for request `id` (errors only logged: nothing waits on it).
    fn send_cancel(&mut self, host: &mut impl Host, id: i64, reason: &str) {
        let notification =
            ClientJsonRpcMessage::notification(ClientNotification::CancelledNotification(
                CancelledNotification::new(CancelledNotificationParam::new(
                    Some(RequestId::Number(id)),
                    Some(reason.to_string()),
                )),
            ));
        let version = self.wire_version().map(str::to_owned);
        if let Err(failure) = host.send(&encode(&notification), version.as_deref()) {
            host.log(&format!(
                "the cancellation of request {id} could not be sent: {failure}"
            ));
        }
    }
}

/// The outer fields of a JSON-RPC message; `result` stays unparsed until it is known what it
/// answers.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    method: Option<String>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// What a `server/discover` answer says.
struct Discovered {
    supported_versions: Vec<ProtocolVersion>,
    capabilities: ServerCapabilities,
    instructions: Option<String>,
    server_info: Option<Implementation>,
}

/// Reads a discover answer as rmcp's `DiscoverResult`, or, when that fails (a server leaving
/// out `ttlMs` or `cacheScope`, which the schema requires), only the fields the driver uses.
fn read_discover(raw: &RawValue, host: &mut impl Host) -> Result<Discovered, String> {
    let typed_error = match serde_json::from_str::<DiscoverResult>(raw.get()) {
        Ok(result) => {
            return Ok(Discovered {
                server_info: result.server_info(),
                supported_versions: result.supported_versions,
                capabilities: result.capabilities,
                instructions: result.instructions,
            })
        }
        Err(error) => error,
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Loose {
        supported_versions: Vec<ProtocolVersion>,
        #[serde(default)]
        capabilities: ServerCapabilities,
        #[serde(default)]
        instructions: Option<String>,
        #[serde(default, rename = "_meta")]
        meta: Option<MetaObject>,
    }
    let loose = serde_json::from_str::<Loose>(raw.get()).map_err(|_| typed_error.to_string())?;
    host.log(&format!(
        "server/discover: the answer does not read as rmcp's DiscoverResult ({typed_error}); its versions and capabilities are used"
    ));
    let server_info = loose
        .meta
        .as_ref()
        .and_then(|meta| meta.get("io.modelcontextprotocol/serverInfo"))
        .and_then(|info| Implementation::deserialize(info).ok());
    Ok(Discovered {
        supported_versions: loose.supported_versions,
        capabilities: loose.capabilities,
        instructions: loose.instructions,
        server_info,
    })
}

/// One page of a list: its items as JSON, and the next cursor. Read as rmcp's result type; a
/// page rmcp cannot read (an item off the schema) is read leniently, and that logged.
fn parse_page(
    list: List,
    raw: &RawValue,
    host: &mut impl Host,
) -> Result<(Vec<Value>, Option<String>), String> {
    fn typed<T: DeserializeOwned, I: Serialize>(
        raw: &RawValue,
        split: impl FnOnce(T) -> (Vec<I>, Option<String>),
    ) -> Result<(Vec<Value>, Option<String>), String> {
        let page = serde_json::from_str::<T>(raw.get()).map_err(|error| error.to_string())?;
        let (items, cursor) = split(page);
        let items = items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        Ok((items, cursor))
    }
    let typed = match list {
        List::Tools => typed(raw, |page: ListToolsResult| (page.tools, page.next_cursor)),
        List::Resources => typed(raw, |page: ListResourcesResult| {
            (page.resources, page.next_cursor)
        }),
        List::ResourceTemplates => typed(raw, |page: ListResourceTemplatesResult| {
            (page.resource_templates, page.next_cursor)
        }),
        List::Prompts => typed(raw, |page: ListPromptsResult| {
            (page.prompts, page.next_cursor)
        }),
    };
    let typed_error = match typed {
        Ok(page) => return Ok(page),
        Err(error) => error,
    };
    let Ok(Value::Object(mut page)) = serde_json::from_str::<Value>(raw.get()) else {
        return Err(typed_error);
    };
    let Some(Value::Array(items)) = page.remove(list.field()) else {
        return Err(typed_error);
    };
    let cursor = match page.remove("nextCursor") {
        Some(Value::String(cursor)) => Some(cursor),
        _ => None,
    };
    host.log(&format!(
        "{}: a page does not read as rmcp's type ({typed_error}); passed on as it is",
        list.method()
    ));
    Ok((items, cursor))
}

/// The per-request context of 2026-07-28 (SEP-2575), as rmcp's
/// `RequestMetaObject::with_client_context`.
fn client_meta(version: ProtocolVersion) -> RequestMetaObject {
    RequestMetaObject::with_client_context(version, client_info(), ClientCapabilities::default())
}

fn client_info() -> Implementation {
    Implementation::new(CLIENT_NAME, CLIENT_VERSION)
}

fn encode(message: &ClientJsonRpcMessage) -> String {
    // Only messages built here, of strings and integers: they always serialize.
    serde_json::to_string(message).unwrap_or_default()
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A request id of ours: an integer (or a string holding one, as rmcp accepts).
fn request_number(id: &RequestId) -> Option<i64> {
    match id {
        NumberOrString::Number(n) => Some(*n),
        NumberOrString::String(s) => s.parse().ok(),
    }
}

/// `error -32601: Method not found` (and its data, cut).
fn describe(error: &ErrorData) -> String {
    let mut text = format!("error {}: {}", error.code.0, one_line(&error.message));
    if let Some(data) = &error.data {
        text.push_str(&format!(" ({})", one_line(&data.to_string())));
    }
    text
}

/// On one line, at most [`MAX_QUOTE_CHARS`] characters.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .take(MAX_QUOTE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTE_CHARS).is_some() {
        line.push('…');
    }
    line
}

/// Server text in backticks, on one line.
fn quote(text: &str) -> String {
    format!("`{}`", one_line(text))
}

/// Whether the host's reason for refusing a message is its size.
fn mentions_size(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    [
        "large",
        "limit",
        "size",
        "bytes",
        "exceed",
        "more than",
        "mib",
        "kib",
    ]
    .iter()
    .any(|word| why.contains(word))
}

#[cfg(test)]
mod tests;
