//! The operator console: a web page per topic with its consumer groups' lag and its open
//! dead letters, each inspectable, with redrive and purge buttons, served by an
//! [`axum::Router`] that a service mounts (or serves alone, as `pizzeria console` does).
//!
//! - **Read-only without a token.** Redrive and purge are refused with `403` unless an
//!   operator token is configured ([`Console::operator_token`]) and the request carries it
//!   (the page's token field, sent as the form field `token`, or `Authorization: Bearer`).
//!   The token also stops cross-site form posts: another site's page cannot know it.
//! - **Every text is escaped**: ids, types, subjects, errors and the bytes of a message come
//!   from whoever published them, and render as text, never as markup.
//! - **Bind it to 127.0.0.1** (the default of `pizzeria console`); it has no TLS of its own.
//! - Redrive and purge are [`DeadLetters`]'s, with their guarantees.
//! - With a correlation store ([`Console::requests`]), the overview lists the requests in
//!   flight: their type, responder, age, time to deadline and claim (until when, and the
//!   node holding it), and the replies the group's requesters tallied as late, duplicate or
//!   forged.
//!
//! - **Live flow**: the overview's counts move by themselves, from `GET /flow` (server-sent
//!   events, one a second): each topic's messages published per second, each
//!   group's lag and messages settled per second.
//!
//! Pages list the newest dead letters first, 50 per page. Each page reads the topic's dead
//! letters afresh (no cache): about 0.3 s for 100,000 on the embedded bus (the
//! `console_pages` example); on a broker the read goes over the network.

mod flow;
mod html;

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::backend::Bus;
use crate::event::{DeadLetters, Filter, KeptLetter};
use crate::messaging::CorrelationStore;
use crate::{Error, ErrorKind};

/// Dead letters per page.
const PAGE: usize = 50;

/// The console's configuration; [`Console::router`] makes the web service.
#[derive(Clone)]
pub struct Console {
    bus: Bus,
    /// Topics shown, each with the consumer groups whose lag is shown.
    topics: Vec<(String, Vec<String>)>,
    /// The operator token; `None`: redrive and purge are refused.
    token: Option<String>,
    /// Where requests wait for their replies, to list those in flight.
    requests: Option<Arc<dyn CorrelationStore>>,
    /// Ends the live flow streams (a graceful shutdown waits for open streams).
    stop: CancellationToken,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("topics", &self.topics)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console over `bus`, showing no topic yet.
    pub fn new(bus: &Bus) -> Console {
        Console {
            bus: bus.clone(),
            topics: Vec::new(),
            token: None,
            requests: None,
            stop: CancellationToken::new(),
        }
    }

    /// Shows `topic`, with the lag of each of `groups`.
    pub fn topic(mut self, topic: &str, groups: &[&str]) -> Console {
        self.topics.push((
            topic.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        ));
        self
    }

    /// Shows the requests in flight in `store` (the requesters' correlation store): counts by
    /// state and the oldest 50 without an outcome, with their age, deadline and claim.
    pub fn requests(mut self, store: Arc<dyn CorrelationStore>) -> Console {
        self.requests = Some(store);
        self
    }

    /// Allows redrive and purge to requests that carry `token` (an empty one allows
    /// nothing).
    pub fn operator_token(mut self, token: impl Into<String>) -> Console {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Ends the live flow streams (`GET /flow`) when `stop` is cancelled: cancel it when the
    /// server shuts down, or its graceful shutdown waits for every open page.
    pub fn stop_streams_on(mut self, stop: CancellationToken) -> Console {
        self.stop = stop;
        self
    }

    /// The web service, to serve at the root of its address: `GET /`, `GET /flow` (live
    /// flow, server-sent events), `POST /topics/{topic}/dead-letters` (redrive every open
    /// dead letter), `POST …/{id}/redrive-group` (to the group that gave up
    /// only, where the engine can: [`DeadLetters::redrive_to_group`]), `GET /topics/{topic}/dead-letters[?page=n]`,
    /// `GET /topics/{topic}/dead-letters/{id}`, and `POST …/{id}/redrive` and `…/{id}/purge`.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", get(overview))
            .route("/flow", get(flow::stream))
            .route("/topics/{topic}/dead-letters", get(list).post(redrive_all))
            .route("/topics/{topic}/dead-letters/{id}", get(show))
            .route("/topics/{topic}/dead-letters/{id}/{action}", post(act))
            .with_state(Arc::new(self))
    }

    fn letters(&self, topic: &str) -> Result<DeadLetters, Refusal> {
        if !self.topics.iter().any(|(t, _)| t == topic) {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("this console does not show topic {topic}"),
            ));
        }
        DeadLetters::new(&self.bus, topic).map_err(|e| Refusal::of(&e))
    }

    /// Whether `headers` or `form` carry the operator token (compared in constant time).
    fn authorized(&self, headers: &HeaderMap, form: Option<&str>) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "redrive and purge are refused: this console has no operator token configured"
                    .into(),
            ));
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or(form).unwrap_or("");
        if same(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal(
                StatusCode::FORBIDDEN,
                "redrive and purge need the operator token (the field at the top of the page)"
                    .into(),
            ))
        }
    }
}

/// `a == b` in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn failure(status: StatusCode, text: &str) -> Response {
    html(
        status,
        html::page(
            "tabgrab console",
            &format!("<p class=err id=error>{}</p>", html::esc(text)),
        ),
    )
}

/// A request the console does not carry out, and why.
struct Refusal(StatusCode, String);

impl Refusal {
    fn of(e: &Error) -> Refusal {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            k if k.is_retryable() || k == ErrorKind::Closed => StatusCode::BAD_GATEWAY,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Refusal(status, e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        failure(self.0, &self.1)
    }
}

fn error(e: &Error) -> Response {
    Refusal::of(e).into_response()
}

async fn overview(State(console): State<Arc<Console>>) -> Response {
    let mut rows = Vec::new();
    for (topic, groups) in &console.topics {
        let mut lags = Vec::new();
        for group in groups {
            lags.push(html::GroupRow {
                group: group.clone(),
                lag: console.bus.lag(topic, group).await.ok().flatten(),
                members: console.bus.members(topic, group).await.ok().flatten(),
            });
        }
        let open = match DeadLetters::new(&console.bus, topic) {
            Ok(letters) => letters
                .list(&Filter::default())
                .await
                .map(|l| l.len())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        rows.push(html::TopicRow {
            topic: topic.clone(),
            groups: lags,
            open,
        });
    }
    let requests = match &console.requests {
        Some(store) => Some(html::Requests {
            store: store.name(),
            counts: store.counts().await.map_err(|e| e.to_string()),
            oldest: store.in_flight(PAGE).await.map_err(|e| e.to_string()),
            now_ms: crate::sql::now_ms(),
        }),
        None => None,
    };
    html(StatusCode::OK, html::overview(&rows, requests.as_ref()))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    page: usize,
    note: Option<String>,
}

async fn list(
    State(console): State<Arc<Console>>,
    Path(topic): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let letters = match console.letters(&topic) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let mut open = match letters.list(&Filter::default()).await {
        Ok(open) => open,
        Err(e) => return error(&e),
    };
    open.reverse();
    let pages = open.len().div_ceil(PAGE);
    let page = query.page.min(pages.saturating_sub(1));
    let shown: Vec<KeptLetter> = open.iter().skip(page * PAGE).take(PAGE).cloned().collect();
    html(
        StatusCode::OK,
        html::dead_letters(
            &topic,
            &shown,
            open.len(),
            page,
            pages,
            query.note.as_deref(),
            console.bus.capabilities().reply_queues,
        ),
    )
}

async fn show(
    State(console): State<Arc<Console>>,
    Path((topic, id)): Path<(String, String)>,
) -> Response {
    let letters = match console.letters(&topic) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    match letters.get(&id).await {
        Ok(kept) => {
            let event = letters.redrivable_event(&kept).ok();
            html(
                StatusCode::OK,
                html::dead_letter(&topic, &kept, event.as_ref()),
            )
        }
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    token: Option<String>,
}

/// `POST /topics/{topic}/dead-letters`: redrives every open dead letter of the topic that can
/// be redriven, one after the other, each settled once the bus acknowledged its publish (so
/// a console killed in the middle leaves the rest listed, to redrive again), and says how
/// many were and why the others were not.
async fn redrive_all(
    State(console): State<Arc<Console>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    let token = form.as_ref().and_then(|f| f.token.as_deref());
    if let Err(refused) = console.authorized(&headers, token) {
        return refused.into_response();
    }
    let letters = match console.letters(&topic) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let open = match letters.list(&Filter::default()).await {
        Ok(open) => open,
        Err(e) => return error(&e),
    };
    let (mut redriven, mut cannot, mut failed) = (0_usize, 0_usize, None);
    for kept in &open {
        if letters.check_redrivable(kept).is_err() {
            cannot += 1;
            continue;
        }
        match letters.redrive_letter(kept).await {
            Ok(_) => redriven += 1,
            Err(e) => {
                // The bus failed: stop here; what is left stays listed.
                failed = Some(e.to_string());
                break;
            }
        }
    }
    tracing::info!(topic, redriven, cannot, "console: dead letters redriven");
    let mut note = format!("{redriven} of {} dead letters redriven", open.len());
    if cannot > 0 {
        note.push_str(&format!("; {cannot} cannot be (open them to see why)"));
    }
    if let Some(why) = failed {
        note.push_str(&format!("; stopped: {why}"));
    }
    Redirect::to(&format!(
        "/topics/{}/dead-letters?note={}",
        html::segment(&topic),
        html::segment(&note)
    ))
    .into_response()
}

/// `POST …/{id}/redrive` and `…/{id}/purge`; any other action is not found.
async fn act(
    State(console): State<Arc<Console>>,
    Path((topic, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, FormRejection>,
) -> Response {
    #[derive(PartialEq)]
    enum Act {
        Redrive,
        RedriveToGroup,
        Purge,
    }
    let act = match action.as_str() {
        "redrive" => Act::Redrive,
        "redrive-group" => Act::RedriveToGroup,
        "purge" => Act::Purge,
        _ => {
            return Refusal(StatusCode::NOT_FOUND, format!("no action {action:?}")).into_response();
        }
    };
    let (topic, id) = (topic.as_str(), id.as_str());
    let form = form.ok();
    let token = form.as_ref().and_then(|f| f.token.as_deref());
    if let Err(refused) = console.authorized(&headers, token) {
        return refused.into_response();
    }
    let letters = match console.letters(topic) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let done = match act {
        Act::Redrive => letters.redrive(id).await.map(|_| "redriven"),
        Act::RedriveToGroup => match letters.get(id).await {
            Ok(kept) => letters
                .redrive_to_group(&kept)
                .await
                .map(|_| "redriven to its group"),
            Err(e) => Err(e),
        },
        Act::Purge => letters.purge(id).await.map(|()| "purged"),
    };
    match done {
        Ok(what) => {
            tracing::info!(
                topic,
                dead_letter = id,
                what,
                "console: dead letter settled"
            );
            Redirect::to(&format!(
                "/topics/{}/dead-letters?note={}",
                html::segment(topic),
                html::segment(&format!("{id} {what}"))
            ))
            .into_response()
        }
        Err(e) => error(&e),
    }
}
