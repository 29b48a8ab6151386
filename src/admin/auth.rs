//! Who may use the console: the API takes `Authorization: Bearer <token>`,
//! the pages a login with the same token that opens a session (an
//! `HttpOnly`, `SameSite=Strict` cookie, kept in this relay's memory for
//! [`SESSION_TTL`]). Tokens are compared in constant time; a wrong or
//! missing one gets 401 (the API) or the login page (the pages), is counted
//! in `hookrelay_console_unauthorized_total`, and is never told why.
//!
//! A request that changes something (any method but GET and HEAD) from a
//! browser must carry an `Origin` of this console's own: `admin.public_origin`
//! when set (the URL users open, behind a proxy that rewrites `Host`), else
//! the request's `Host`. Another site cannot make an operator's browser
//! replay anything. A session without an `Origin` on such a request is
//! refused too; the API with a token from a script needs none (a browser
//! cannot send the token cross-site).
//!
//! Guessing the token is braked: after [`GUESSES`] wrong tokens from one
//! address (an IPv4 address, an IPv6 /64) within [`GUESS_WINDOW`], that
//! address gets 429 with `Retry-After` for [`THROTTLE`], whatever token it
//! sends, said once in the log and counted in
//! `hookrelay_console_throttled_total`. A live session is never braked, and
//! a stale session cookie is not a guess (it is sent to log in again). The
//! address is the TCP peer, or behind `admin.trusted_proxies` the one they
//! saw.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::answers::{Refusal, RefusalCode};
use super::{Admin, pages};
use crate::config::{IpRanges, Protection, Secret};
use crate::ingress::client_ip;
use crate::unpoisoned::Locked;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "hookrelay_session";
/// How long a session lasts after its login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Wrong tokens from one address within [`GUESS_WINDOW`] before it is braked.
pub(crate) const GUESSES: u32 = 10;
pub(crate) const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// How long a braked address gets 429.
pub(crate) const THROTTLE: Duration = Duration::from_secs(60);
/// Addresses whose guesses are counted at most (the oldest go first).
const MAX_GUESSERS: usize = 4096;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::get().to(login_page))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

/// The console's token and open sessions.
pub(crate) struct Console {
    token: Secret,
    secure_cookie: bool,
    /// `admin.public_origin`: the origin users open, when a proxy rewrites `Host`.
    public_origin: Option<String>,
    /// Whose `X-Forwarded-For` is believed, for the guesser's address.
    trusted_proxies: IpRanges,
    sessions: Mutex<Sessions>,
    guessers: Mutex<HashMap<IpAddr, Guesses>>,
}

/// Wrong tokens from one address.
#[derive(Debug, Clone, Copy)]
struct Guesses {
    wrong: u32,
    since: Instant,
    /// Braked until then.
    until: Option<Instant>,
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

/// What the brake on guessing decided for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Brake {
    Free,
    /// 429 for this many more seconds.
    Braked(u64),
}

impl Console {
    pub(crate) fn new(
        token: Secret,
        protected_by: Option<Protection>,
        public_origin: Option<String>,
        trusted_proxies: IpRanges,
    ) -> Console {
        let secure_cookie = protected_by == Some(Protection::TlsProxy)
            || public_origin
                .as_deref()
                .is_some_and(|origin| origin.starts_with("https://"));
        Console {
            token,
            secure_cookie,
            // Validated at load; compared as a browser writes it.
            public_origin: public_origin.map(|origin| {
                crate::config::web_origin(&origin)
                    .unwrap_or_else(|_| origin.trim_end_matches('/').to_owned())
            }),
            trusted_proxies,
            sessions: Mutex::default(),
            guessers: Mutex::default(),
        }
    }

    fn guessers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Guesses>> {
        self.guessers.locked()
    }

    /// Whether `who` is braked now.
    fn brake(&self, who: IpAddr, now: Instant) -> Brake {
        match self.guessers().get(&guesser(who)).and_then(|g| g.until) {
            Some(until) if until > now => Brake::Braked((until - now).as_secs().max(1)),
            _ => Brake::Free,
        }
    }

    /// One wrong token from `who`: true when this one brakes it.
    fn wrong_guess(&self, who: IpAddr, now: Instant) -> bool {
        let who = guesser(who);
        let mut guessers = self.guessers();
        if guessers.len() >= MAX_GUESSERS && !guessers.contains_key(&who) {
            guessers.retain(|_, g| {
                now.duration_since(g.since) < GUESS_WINDOW || g.until.is_some_and(|u| u > now)
            });
            // Room for a new guesser: the oldest that is not braked goes
            // first, so fresh addresses cannot free a braked one.
            let braked = |g: &Guesses| g.until.is_some_and(|u| u > now);
            if guessers.len() >= MAX_GUESSERS
                && let Some(oldest) = guessers
                    .iter()
                    .min_by_key(|(_, g)| (braked(g), g.since))
                    .map(|(ip, _)| *ip)
            {
                guessers.remove(&oldest);
            }
        }
        let guesses = guessers.entry(who).or_insert(Guesses {
            wrong: 0,
            since: now,
            until: None,
        });
        if now.duration_since(guesses.since) >= GUESS_WINDOW
            && guesses.until.is_none_or(|u| u <= now)
        {
            *guesses = Guesses {
                wrong: 0,
                since: now,
                until: None,
            };
        }
        guesses.wrong += 1;
        if guesses.wrong >= GUESSES && guesses.until.is_none_or(|u| u <= now) {
            guesses.until = Some(now + THROTTLE);
            return true;
        }
        false
    }

    /// The address a request came from, as the brake counts it.
    fn client(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip::of_request(req, &self.trusted_proxies)
    }

    /// Whether a request's `Origin` is this console's own.
    fn origin(&self, headers: &HeaderMap) -> Origin {
        match &self.public_origin {
            Some(expected) => match headers
                .get(header::ORIGIN)
                .map(|o| o.to_str().unwrap_or(""))
            {
                None => Origin::Absent,
                Some(origin) if origin.trim_end_matches('/').eq_ignore_ascii_case(expected) => {
                    Origin::Own
                }
                Some(_) => Origin::Foreign,
            },
            None => origin_check(headers),
        }
    }

    /// The origin a request that changes something must come from, to say so.
    fn expected_origin(&self, headers: &HeaderMap) -> String {
        match &self.public_origin {
            Some(origin) => origin.clone(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|host| host.to_str().ok())
                    .unwrap_or("?");
                format!(
                    "this console's host {host} (set admin.public_origin to the URL users open, \
                     if a proxy rewrites Host)"
                )
            }
        }
    }

    fn token_matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.token.expose().as_bytes()))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.locked()
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
    by: Credential,
    peer: String,
}

/// What the operator proved who they are with.
#[derive(Debug, Clone, Copy)]
enum Credential {
    Token,
    Session(u64),
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.by {
            Credential::Token => write!(f, "the API token from {}", self.peer),
            Credential::Session(number) => write!(f, "console session {number} from {}", self.peer),
        }
    }
}

/// What the console answers when it cannot do what was asked: one status
/// and a JSON reason (`{"error": ..., "reason": ...}`) each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    #[error("a valid admin token is required")]
    Unauthorized { page: bool },
    #[error(
        "refused: a request that changes something must come from this console's own origin, \
         {expected}; it came from {got}"
    )]
    CrossOrigin { expected: String, got: String },
    /// Too many wrong tokens from this address: wait.
    #[error("too many wrong tokens from this address: try again in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// What was asked needs a part of the relay that is off.
    #[error("{0}")]
    Off(String),
    /// What was asked is read from what the relay derives from the history,
    /// which has not caught up with it yet (after a first start): ask again.
    #[error("{0}")]
    CatchingUp(String),
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
    fn code(&self) -> RefusalCode {
        match self {
            ConsoleError::Unauthorized { .. } => RefusalCode::Unauthorized,
            ConsoleError::CrossOrigin { .. } => RefusalCode::CrossOrigin,
            ConsoleError::Throttled(_) => RefusalCode::Throttled,
            ConsoleError::NotFound(_) => RefusalCode::NotFound,
            ConsoleError::BadRequest(_) => RefusalCode::BadRequest,
            ConsoleError::Off(_) => RefusalCode::Off,
            ConsoleError::CatchingUp(_) => RefusalCode::CatchingUp,
            ConsoleError::Failed(_) => RefusalCode::Failed,
        }
    }

    fn refusal(&self) -> Refusal {
        Refusal {
            error: self.code(),
            reason: self.to_string(),
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ConsoleError::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            ConsoleError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Off(_) => StatusCode::CONFLICT,
            ConsoleError::CatchingUp(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            // To the login form, dropping a session cookie this relay no
            // longer knows (it restarted, or the session expired).
            ConsoleError::Unauthorized { page: true } => {
                let mut stale = Cookie::build(SESSION_COOKIE, "").path("/").finish();
                stale.make_removal();
                HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, "/login"))
                    .cookie(stale)
                    .finish()
            }
            ConsoleError::Unauthorized { page: false } => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(self.refusal()),
            ConsoleError::CatchingUp(_) => HttpResponse::build(self.status_code())
                .insert_header((header::RETRY_AFTER, "2"))
                .json(self.refusal()),
            ConsoleError::Throttled(seconds) => HttpResponse::build(self.status_code())
                .insert_header((header::RETRY_AFTER, seconds.to_string()))
                .json(self.refusal()),
            _ => HttpResponse::build(self.status_code()).json(self.refusal()),
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
    let origin = console.origin(req.headers());
    let cross_origin = || ConsoleError::CrossOrigin {
        expected: console.expected_origin(req.headers()),
        got: req
            .headers()
            .get(header::ORIGIN)
            .and_then(|origin| origin.to_str().ok())
            .map_or_else(
                || "no Origin".to_owned(),
                |origin| format!("Origin {origin}"),
            ),
    };
    if changes && origin == Origin::Foreign {
        warn!(
            path = req.path(),
            "console: a cross-origin request was refused"
        );
        return Err(cross_origin());
    }
    let client = console.client(req);
    let peer = client.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
    let now = Instant::now();
    let page = !req.path().starts_with("/api/");
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    // A live session is no guess (its id is 256 random bits), whatever its
    // address did: whoever brakes the address operators share (a proxy's)
    // cannot lock out their sessions.
    let session = match (bearer, req.cookie(SESSION_COOKIE)) {
        (None, Some(cookie)) => console.session(cookie.value()),
        _ => None,
    };
    if let Some(number) = session {
        if changes && origin != Origin::Own {
            warn!(
                path = req.path(),
                "console: a session's request without an Origin was refused"
            );
            return Err(cross_origin());
        }
        return Ok(Operator {
            by: Credential::Session(number),
            peer,
        });
    }
    if let Some(Brake::Braked(seconds)) = client.map(|ip| console.brake(ip, now)) {
        return Err(ConsoleError::Throttled(seconds));
    }
    match bearer {
        Some(token) if console.token_matches(token.trim()) => Ok(Operator {
            by: Credential::Token,
            peer,
        }),
        Some(_) => {
            admin.metrics.console_unauthorized();
            if let Some(client) = client {
                guessed_wrong(console, admin, client, now);
            }
            Err(ConsoleError::Unauthorized { page })
        }
        // No token, or a session this relay does not know (it restarted, or
        // the session expired): not a guess.
        None => {
            admin.metrics.console_unauthorized();
            Err(ConsoleError::Unauthorized { page })
        }
    }
}

/// Whom the brake counts for an address: an IPv4 address, or an IPv6
/// address's /64 (one host usually holds a whole /64, and would otherwise
/// guess from a new address each time).
fn guesser(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Counts a wrong token from `client`; says so once when it brakes it.
fn guessed_wrong(console: &Console, admin: &Admin, client: IpAddr, now: Instant) {
    if console.wrong_guess(client, now) {
        admin.metrics.console_throttled();
        warn!(
            peer = %client,
            guesses = GUESSES,
            seconds = THROTTLE.as_secs(),
            "console: too many wrong tokens from this address; it gets 429 for a while"
        );
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
    if console.origin(req.headers()) == Origin::Foreign {
        return ConsoleError::CrossOrigin {
            expected: console.expected_origin(req.headers()),
            got: req
                .headers()
                .get(header::ORIGIN)
                .and_then(|origin| origin.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
        .error_response();
    }
    let client = console.client(&req);
    let peer = client.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
    let now = Instant::now();
    if let Some(Brake::Braked(seconds)) = client.map(|ip| console.brake(ip, now)) {
        return ConsoleError::Throttled(seconds).error_response();
    }
    if !console.token_matches(form.token.trim()) {
        admin.metrics.console_unauthorized();
        warn!(%peer, "console: a login with a wrong token was refused");
        if let Some(client) = client {
            guessed_wrong(console, &admin, client, now);
        }
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

    #[test]
    fn guessing_is_braked_after_so_many_wrong_tokens_and_lifted_after_a_while() {
        let console = Console::new(
            Secret::new("0123456789abcdef-token"),
            None,
            None,
            IpRanges::default(),
        );
        let (guesser, other) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let start = Instant::now();
        for n in 1..GUESSES {
            assert!(!console.wrong_guess(guesser, start), "guess {n}");
        }
        assert!(
            console.wrong_guess(guesser, start),
            "braked at the tenth, said once"
        );
        assert!(!console.wrong_guess(guesser, start), "not said again");
        assert!(matches!(console.brake(guesser, start), Brake::Braked(60)));
        assert_eq!(
            console.brake(other, start),
            Brake::Free,
            "another address is free"
        );
        assert_eq!(
            console.brake(guesser, start + THROTTLE),
            Brake::Free,
            "lifted after a while"
        );
        // Slow guesses, one a minute, are never braked.
        for n in 1..=3 * GUESSES {
            let at = start + GUESS_WINDOW * n;
            assert!(!console.wrong_guess(other, at));
        }
    }

    #[test]
    fn an_ipv6_host_is_braked_for_its_whole_64_and_fresh_addresses_free_no_braked_one() {
        let console = Console::new(
            Secret::new("0123456789abcdef-token"),
            None,
            None,
            IpRanges::default(),
        );
        let start = Instant::now();
        for n in 1..=GUESSES {
            let from: IpAddr = format!("2001:db8:1:2::{n:x}").parse().unwrap();
            console.wrong_guess(from, start);
        }
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(matches!(console.brake(neighbour, start), Brake::Braked(_)));
        let next_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(console.brake(next_net, start), Brake::Free);

        // The table full of fresh guessers: the braked one stays braked.
        for n in 0..u32::try_from(MAX_GUESSERS).unwrap() + 10 {
            console.wrong_guess(IpAddr::V4(n.into()), start);
        }
        assert!(console.guessers().len() <= MAX_GUESSERS);
        assert!(matches!(console.brake(neighbour, start), Brake::Braked(_)));
    }

    #[test]
    fn behind_a_proxy_the_origin_is_the_public_one() {
        let console = Console::new(
            Secret::new("0123456789abcdef-token"),
            Some(Protection::TlsProxy),
            Some("https://relay.example.com/".into()),
            IpRanges::default(),
        );
        let through_proxy = headers(&[
            (header::HOST, "127.0.0.1:9090"),
            (header::ORIGIN, "https://relay.example.com"),
        ]);
        assert_eq!(console.origin(&through_proxy), Origin::Own);
        let direct = headers(&[
            (header::HOST, "127.0.0.1:9090"),
            (header::ORIGIN, "http://127.0.0.1:9090"),
        ]);
        assert_eq!(console.origin(&direct), Origin::Foreign);
        assert_eq!(
            console.expected_origin(&direct),
            "https://relay.example.com"
        );
        assert!(console.secure_cookie);
    }

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
        let console = Console::new(
            Secret::new("0123456789abcdef-token"),
            None,
            None,
            IpRanges::default(),
        );
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
