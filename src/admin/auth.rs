//! Who may use the console: the API takes `Authorization: Bearer <token>`,
//! the pages a login with the same token that opens a session (an
//! `HttpOnly`, `SameSite=Strict` cookie, kept in this relay's memory for
//! [`SESSION_TTL`]). Tokens are compared in constant time; a wrong or
//! missing one gets 401 (the API) or the login page (the pages), is counted
//! in `hookrelay_console_unauthorized_total`, and is never told why.
//!
//! A request that changes something (any method but GET and HEAD) from a
//! browser must carry an `Origin` of this console's own host: another site
//! cannot make an operator's browser replay anything. A session without an
//! `Origin` on such a request is refused too; the API with a token from a
//! script needs none (a browser cannot send the token cross-site).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::{Admin, pages};
use crate::config::{Protection, Secret};

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "hookrelay_session";
/// How long a session lasts after its login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 256;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::get().to(login_page))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

/// The console's token and open sessions.
pub(crate) struct Console {
    token: Secret,
    secure_cookie: bool,
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Session>,
    opened: u64,
}

#[derive(Clone, Copy)]
struct Session {
    /// The how-many-th login since the relay started: what the log names.
    number: u64,
    expires: Instant,
}

impl Console {
    pub(crate) fn new(token: Secret, protected_by: Option<Protection>) -> Console {
        Console {
            token,
            secure_cookie: protected_by == Some(Protection::TlsProxy),
            sessions: Mutex::default(),
        }
    }

    fn token_matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.token.expose().as_bytes()))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session: its cookie value and number.
    fn open_session(&self) -> (String, u64) {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.by_id.retain(|_, session| session.expires > now);
        if sessions.by_id.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .by_id
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(id, _)| id.clone())
        {
            sessions.by_id.remove(&oldest);
        }
        sessions.opened += 1;
        let number = sessions.opened;
        let session = Session {
            number,
            expires: now + SESSION_TTL,
        };
        sessions.by_id.insert(id.clone(), session);
        (id, number)
    }

    /// The number of the live session `id`.
    fn session(&self, id: &str) -> Option<u64> {
        let sessions = self.sessions();
        // A map lookup by the cookie's value: its timing says at most whether
        // a guess shares a hash bucket with a session of 256 random bits.
        sessions
            .by_id
            .get(id)
            .filter(|session| session.expires > Instant::now())
            .map(|session| session.number)
    }

    fn close_session(&self, id: &str) {
        self.sessions().by_id.remove(id);
    }
}

/// Who made a console request: logged with every action.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    how: How,
    peer: String,
}

#[derive(Debug, Clone, Copy)]
enum How {
    Token,
    Session(u64),
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.how {
            How::Token => write!(f, "the API token from {}", self.peer),
            How::Session(number) => write!(f, "console session {number} from {}", self.peer),
        }
    }
}

/// What the console answers when it cannot do what was asked: one status
/// and a JSON reason (`{"error": ..., "reason": ...}`) each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    #[error("a valid admin token is required")]
    Unauthorized { page: bool },
    #[error("refused: a request that changes something must come from this console's own origin")]
    CrossOrigin,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// What was asked needs a part of the relay that is off.
    #[error("{0}")]
    Off(String),
    /// RabbitMQ or the spool could not do it.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for ConsoleError {
    fn from(err: anyhow::Error) -> Self {
        ConsoleError::Failed(err)
    }
}

impl ConsoleError {
    fn code(&self) -> &'static str {
        match self {
            ConsoleError::Unauthorized { .. } => "unauthorized",
            ConsoleError::CrossOrigin => "cross_origin",
            ConsoleError::NotFound(_) => "not_found",
            ConsoleError::BadRequest(_) => "bad_request",
            ConsoleError::Off(_) => "off",
            ConsoleError::Failed(_) => "failed",
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ConsoleError::CrossOrigin => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Off(_) => StatusCode::CONFLICT,
            ConsoleError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::Unauthorized { page: true } => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login"))
                .finish(),
            ConsoleError::Unauthorized { page: false } => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(json!({ "error": self.code(), "reason": self.to_string() })),
            _ => HttpResponse::build(self.status_code())
                .json(json!({ "error": self.code(), "reason": self.to_string() })),
        }
    }
}

impl FromRequest for Operator {
    type Error = ConsoleError;
    type Future = std::future::Ready<Result<Operator, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(operator(req))
    }
}

fn operator(req: &HttpRequest) -> Result<Operator, ConsoleError> {
    let admin = req
        .app_data::<web::Data<Admin>>()
        .expect("the admin state is registered");
    let Some(console) = &admin.console else {
        return Err(ConsoleError::NotFound("the console is off".to_owned()));
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let origin = origin_check(req.headers());
    if changes && origin == Origin::Foreign {
        warn!(
            path = req.path(),
            "console: a cross-origin request was refused"
        );
        return Err(ConsoleError::CrossOrigin);
    }
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_owned(), |peer| peer.ip().to_string());
    let page = !req.path().starts_with("/api/");
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let how = match (bearer, req.cookie(SESSION_COOKIE)) {
        (Some(token), _) if console.token_matches(token.trim()) => Some(How::Token),
        (Some(_), _) => None,
        (None, Some(cookie)) => console.session(cookie.value()).map(How::Session),
        (None, None) => None,
    };
    match how {
        Some(How::Session(_)) if changes && origin != Origin::Own => {
            warn!(
                path = req.path(),
                "console: a session's request without an Origin was refused"
            );
            Err(ConsoleError::CrossOrigin)
        }
        Some(how) => Ok(Operator { how, peer }),
        None => {
            admin.metrics.console_unauthorized();
            Err(ConsoleError::Unauthorized { page })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// No `Origin` header.
    Absent,
    /// The `Origin`'s host and port are the request's `Host`.
    Own,
    Foreign,
}

/// Whether the request's `Origin` is this console (its `Host`, behind a
/// proxy the host the browser used).
fn origin_check(headers: &HeaderMap) -> Origin {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Origin::Absent;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    match (origin_host, host) {
        (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => Origin::Own,
        _ => Origin::Foreign,
    }
}

async fn login_page() -> HttpResponse {
    pages::login(None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    req: HttpRequest,
    admin: web::Data<Admin>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let Some(console) = &admin.console else {
        return HttpResponse::NotFound().finish();
    };
    if origin_check(req.headers()) == Origin::Foreign {
        return ConsoleError::CrossOrigin.error_response();
    }
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_owned(), |peer| peer.ip().to_string());
    if !console.token_matches(form.token.trim()) {
        admin.metrics.console_unauthorized();
        warn!(%peer, "console: a login with a wrong token was refused");
        let mut page = pages::login(Some("That token is not this console's."));
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    let (id, number) = console.open_session();
    info!(session = number, %peer, "console: logged in");
    let cookie = Cookie::build(SESSION_COOKIE, id)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(console.secure_cookie)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX),
        ))
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .cookie(cookie)
        .finish()
}

async fn logout(req: HttpRequest, admin: web::Data<Admin>, operator: Operator) -> HttpResponse {
    if let (Some(console), Some(cookie)) = (&admin.console, req.cookie(SESSION_COOKIE)) {
        console.close_session(cookie.value());
    }
    info!(by = %operator, "console: logged out");
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .cookie(gone)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn an_origin_is_own_only_with_the_requests_host_and_port() {
        let own = headers(&[
            (header::HOST, "127.0.0.1:9090"),
            (header::ORIGIN, "http://127.0.0.1:9090"),
        ]);
        assert_eq!(origin_check(&own), Origin::Own);
        let other_port = headers(&[
            (header::HOST, "127.0.0.1:9090"),
            (header::ORIGIN, "http://127.0.0.1:8000"),
        ]);
        assert_eq!(origin_check(&other_port), Origin::Foreign);
        let other_site = headers(&[
            (header::HOST, "127.0.0.1:9090"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert_eq!(origin_check(&other_site), Origin::Foreign);
        let opaque = headers(&[(header::HOST, "127.0.0.1:9090"), (header::ORIGIN, "null")]);
        assert_eq!(origin_check(&opaque), Origin::Foreign);
        assert_eq!(
            origin_check(&headers(&[(header::HOST, "h")])),
            Origin::Absent
        );
    }

    #[test]
    fn a_session_lives_until_it_is_closed_and_the_token_must_match_whole() {
        let console = Console::new(Secret::new("0123456789abcdef-token"), None);
        assert!(console.token_matches("0123456789abcdef-token"));
        assert!(!console.token_matches("0123456789abcdef-toke"));
        assert!(!console.token_matches(""));
        let (id, number) = console.open_session();
        let (other, second) = console.open_session();
        assert_eq!((number, second), (1, 2));
        assert_ne!(id, other);
        assert_eq!(console.session(&id), Some(1));
        console.close_session(&id);
        assert_eq!(console.session(&id), None);
        assert_eq!(console.session("guess"), None);
    }
}
