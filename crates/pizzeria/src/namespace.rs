//! A namespace on a shared broker: every topic a process uses gets the namespace as a
//! prefix, so that several runs share one NATS or RabbitMQ server without reading each
//! other's messages, and what a run made can be deleted when it ends.
//!
//! # Why
//! The pizzeria's topics have fixed names (`pizzeria`, `payment`, `kitchen`,
//! `replies.front-desk-messaging`). Two runs on one broker at once (the lab and a test, two
//! tests, two colleagues) would share their streams and queues: one run's kitchen would bake
//! the other's orders, and one run's clean-up would delete the other's backlog. A namespace
//! turns topic `kitchen` into `<namespace>.kitchen` (NATS stream `TABGRAB_<namespace>~kitchen`,
//! RabbitMQ exchange `tabgrab.<namespace>.kitchen`) for everything the process publishes or
//! subscribes to, replies included: a request's `replyto` names the un-prefixed reply topic,
//! and the responder's publish to it goes through the same namespace.
//!
//! # How
//! [`Namespaced`] is a [`Backend`] over another backend: it renames topics on the way in and
//! changes nothing else, so the same code runs on every engine. It also remembers every
//! topic it touched, for [`Connection::clean_up`], and counts the publishes each topic
//! acknowledged (a publish the engine recognised as a duplicate is not counted): the lab
//! reads its response messages there on a broker, where it reads the log on the embedded
//! bus.
//!
//! # In a URL
//! `nats://127.0.0.1:4222?namespace=lab-1` or
//! `amqp://guest:guest@127.0.0.1:5672/%2f?namespace=lab-1`: [`connect`] takes the
//! `namespace` setting out of the URL and gives the rest to [`Bus::connect`]. A namespace is
//! letters, digits, `-` and `_`, at most 64 characters.
//!
//! Clean-up deletes what *this connection* made. On RabbitMQ that is all it can delete: a
//! group's queue is known by its name only to the connection that declared it, so queues
//! declared by other processes in the namespace stay (delete them with `rabbitmqctl`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tabgrab::backend::{
    Backend, Bus, Capabilities, Deliveries, EngineReport, Published, SubscribeRequest,
};
use tabgrab::{Codec, Envelope, Topic};

use crate::error::{Error, ErrorKind};

/// The longest namespace accepted.
const MAX_LEN: usize = 64;

/// Checks a namespace: 1 to 64 letters, digits, `-` or `_`.
pub fn validate(namespace: &str) -> Result<(), Error> {
    let ok = !namespace.is_empty()
        && namespace.len() <= MAX_LEN
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Usage,
            format!(
                "namespace {namespace:?}: use 1 to {MAX_LEN} letters, digits, '-' or '_' (it prefixes topic names)"
            ),
        ))
    }
}

/// Takes `namespace=…` out of a bus URL's query: the URL without it, and the namespace.
pub fn split_url(url: &str) -> Result<(String, Option<String>), Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut namespace = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("namespace", value)) => {
                validate(value)?;
                namespace = Some(value.to_owned());
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, namespace))
}

/// What a [`Namespaced`] backend saw, per un-prefixed topic.
#[derive(Debug, Default)]
struct Seen {
    /// Acknowledged publishes (duplicates excluded), by topic; every touched topic is a key.
    published: BTreeMap<String, u64>,
    /// The topic (un-prefixed) of each group queue handed out by `group_queue`, so that a
    /// reply put straight into a requester's queue counts as a publish to its reply topic.
    queues: BTreeMap<String, String>,
}

/// A backend whose topics are all prefixed with a namespace; see the module docs.
pub struct Namespaced {
    /// The engine underneath.
    inner: Arc<dyn Backend>,
    /// `<namespace>.`, prepended to every topic.
    prefix: String,
    /// The topics touched and their publishes.
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaced")
            .field("engine", &self.inner.name())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Namespaced {
    /// `inner` with every topic prefixed by `namespace` (checked by [`validate`]); with
    /// `None`, topics keep their names and are only counted.
    pub fn new(inner: Arc<dyn Backend>, namespace: Option<&str>) -> Result<Namespaced, Error> {
        let prefix = match namespace {
            Some(namespace) => {
                validate(namespace)?;
                format!("{namespace}.")
            }
            None => String::new(),
        };
        Ok(Namespaced {
            inner,
            prefix,
            seen: Mutex::new(Seen::default()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `topic` in the namespace, remembered for clean-up.
    fn scoped(&self, topic: &Topic) -> Result<Topic, tabgrab::Error> {
        self.seen().published.entry(topic.to_string()).or_insert(0);
        self.renamed(topic)
    }

    /// `topic` in the namespace (the prefix is a checked namespace and a `.`, so this fails
    /// only if that check was bypassed).
    fn renamed(&self, topic: &Topic) -> Result<Topic, tabgrab::Error> {
        topic.prefixed(&self.prefix)
    }
}

impl Backend for Namespaced {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn connected(&self) -> Result<(), String> {
        self.inner.connected()
    }

    fn codec(&self) -> Codec {
        self.inner.codec()
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            let published = self.inner.publish(&scoped, envelope).await?;
            if !published.duplicate {
                *self.seen().published.entry(topic.to_string()).or_insert(0) += 1;
            }
            Ok(published)
        }
        .boxed()
    }

    fn publish_encoded<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
        encoded: bytes::Bytes,
    ) -> BoxFuture<'a, Result<Published, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            let published = self
                .inner
                .publish_encoded(&scoped, envelope, encoded)
                .await?;
            if !published.duplicate {
                *self.seen().published.entry(topic.to_string()).or_insert(0) += 1;
            }
            Ok(published)
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a Topic,
        subject: Option<&'a str>,
        payload: bytes::Bytes,
    ) -> BoxFuture<'a, Result<Published, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            self.inner.publish_raw(&scoped, subject, payload).await
        }
        .boxed()
    }

    fn publish_to_queue<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, tabgrab::Error>> {
        // Queue names are the engine's, already in the namespace (from `group_queue`) or a
        // foreign client's own.
        async move {
            let published = self.inner.publish_to_queue(queue, envelope).await?;
            let mut seen = self.seen();
            if let Some(topic) = seen.queues.get(queue).cloned()
                && !published.duplicate
            {
                *seen.published.entry(topic).or_insert(0) += 1;
            }
            Ok(published)
        }
        .boxed()
    }

    fn group_queue(&self, topic: &Topic, group: &str) -> Option<String> {
        let queue = self.inner.group_queue(&self.scoped(topic).ok()?, group)?;
        self.seen().queues.insert(queue.clone(), topic.to_string());
        Some(queue)
    }

    fn ack_wait(&self, requested: Duration) -> Duration {
        self.inner.ack_wait(requested)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), tabgrab::Error>> {
        self.inner.flush()
    }

    fn original_location(&self, topic: &Topic, position: u64) -> String {
        match self.renamed(topic) {
            Ok(renamed) => self.inner.original_location(&renamed, position),
            Err(_) => self.inner.original_location(topic, position),
        }
    }

    fn subscribe(
        self: Arc<Self>,
        mut request: SubscribeRequest,
    ) -> BoxFuture<'static, Result<Deliveries, tabgrab::Error>> {
        match self.scoped(&request.topic) {
            Ok(topic) => {
                request.topic = topic;
                Arc::clone(&self.inner).subscribe(request)
            }
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn live_lag(&self, topic: &Topic, group: &str) -> Option<u64> {
        self.inner.live_lag(&self.renamed(topic).ok()?, group)
    }

    fn read_all<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<Vec<Envelope>, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            self.inner.read_all(&scoped).await
        }
        .boxed()
    }

    fn group_members<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            self.inner.group_members(&scoped, group).await
        }
        .boxed()
    }

    fn topic_end<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<Option<u64>, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            self.inner.topic_end(&scoped).await
        }
        .boxed()
    }

    fn group_lag<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, tabgrab::Error>> {
        async move {
            let scoped = self.scoped(topic)?;
            self.inner.group_lag(&scoped, group).await
        }
        .boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), tabgrab::Error>> {
        async move {
            let scoped = self.renamed(topic)?;
            self.inner.delete_topic(&scoped).await
        }
        .boxed()
    }

    fn report(&self) -> BoxFuture<'_, Result<EngineReport, tabgrab::Error>> {
        self.inner.report()
    }
}

/// A bus connection, maybe in a namespace: the [`Bus`] to hand to services, and what it
/// published.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The bus: on a broker, through the counting (and maybe renaming) layer.
    bus: Bus,
    /// The namespace, if any.
    namespace: Option<String>,
    /// The layer, on a broker.
    layer: Option<Arc<Namespaced>>,
}

/// Connects to `url` (see [`Bus::connect`]), in the namespace of its `namespace=` setting if
/// it has one.
pub async fn connect(url: &str) -> Result<Connection, Error> {
    let (url, namespace) = split_url(url)?;
    let bus = Bus::connect(&url).await.map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot connect to the bus {}",
                tabgrab::SecretUrl::new(url.as_str())
            ),
        )
        .with_source(e)
    })?;
    Connection::over(&bus, namespace.as_deref())
}

impl Connection {
    /// `bus`, in `namespace` if given. On a broker every publish is counted; the embedded
    /// bus is used as it is, and refuses a namespace (it is one directory per run already).
    pub fn over(bus: &Bus, namespace: Option<&str>) -> Result<Connection, Error> {
        if bus.as_embedded().is_some() {
            if namespace.is_some() {
                return Err(Error::new(
                    ErrorKind::Usage,
                    "a namespace needs a broker (nats://, amqp://); the embedded bus is one directory per run already",
                ));
            }
            return Ok(Connection {
                bus: bus.clone(),
                namespace: None,
                layer: None,
            });
        }
        let layer = Arc::new(Namespaced::new(Arc::clone(bus.backend()), namespace)?);
        let dyn_layer: Arc<dyn Backend> = layer.clone();
        Ok(Connection {
            bus: Bus::from_backend(dyn_layer),
            namespace: namespace.map(str::to_owned),
            layer: Some(layer),
        })
    }

    /// The bus to give publishers, subscriptions, requesters and responders.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The namespace, if there is one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Publishes acknowledged so far on the topics that `which` selects (un-prefixed names);
    /// `None` on the embedded bus (read its log instead).
    pub fn published(&self, which: impl Fn(&str) -> bool) -> Option<u64> {
        let layer = self.layer.as_ref()?;
        Some(
            layer
                .seen()
                .published
                .iter()
                .filter(|(topic, _)| which(topic))
                .map(|(_, n)| n)
                .sum(),
        )
    }

    /// The topics touched so far (un-prefixed), empty on the embedded bus.
    pub fn topics(&self) -> Vec<String> {
        self.layer.as_ref().map_or_else(Vec::new, |layer| {
            layer.seen().published.keys().cloned().collect()
        })
    }

    /// Deletes every topic of the namespace that this connection touched (streams,
    /// exchanges, the queues it declared, their dead letters); nothing without a namespace.
    /// Stop the subscriptions first. Returns how many topics were deleted.
    pub async fn clean_up(&self) -> Result<usize, Error> {
        if self.namespace.is_none() {
            return Ok(0);
        }
        let topics = self.topics();
        let mut deleted = 0;
        for topic in &topics {
            // `delete_topic` takes a topic's dead letters with it.
            let with_its_topic = topics
                .iter()
                .any(|t| tabgrab::event::dead_letter_topic(t) == *topic);
            if with_its_topic {
                continue;
            }
            self.bus.delete_topic(topic).await.map_err(|e| {
                Error::new(
                    ErrorKind::Bus,
                    format!("cannot delete the topic {topic} of the namespace"),
                )
                .with_source(e)
            })?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// The bus an operator command works on: a broker (`--bus`), or the embedded log of a data
/// directory (opened here; close it with [`Opened::close`]).
pub(crate) struct Opened {
    /// The bus.
    pub(crate) bus: Bus,
    /// Kept alive with the bus, on a broker.
    _connection: Option<Connection>,
    /// The embedded log, when it is one.
    pub(crate) embedded: Option<tabgrab::backend::embedded::EmbeddedBus>,
}

impl Opened {
    /// Flushes and closes the embedded log, if it is one.
    pub(crate) async fn close(self) -> Result<(), Error> {
        if let Some(embedded) = self.embedded {
            embedded.close().await?;
        }
        Ok(())
    }
}

/// Connects to `url`, or opens the embedded log of `data_dir` (which must hold pizzeria
/// data; a running `pizzeria run` holds it, and the error says so).
pub(crate) async fn open(url: Option<&str>, data_dir: &std::path::Path) -> Result<Opened, Error> {
    if let Some(url) = url {
        let connection = connect(url).await?;
        return Ok(Opened {
            bus: connection.bus().clone(),
            _connection: Some(connection),
            embedded: None,
        });
    }
    if !data_dir.join("topics").is_dir() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "{} holds no pizzeria data; pass the --data-dir of a `pizzeria run`, or --bus",
                data_dir.display()
            ),
        ));
    }
    let embedded = tabgrab::backend::embedded::EmbeddedBus::open(data_dir).map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot open {} (is a `pizzeria run` using it?)",
                data_dir.display()
            ),
        )
        .with_source(e)
    })?;
    Ok(Opened {
        bus: Bus::from(&embedded),
        _connection: None,
        embedded: Some(embedded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_taken_out_of_the_url_and_other_settings_stay() {
        let (url, ns) = split_url("nats://127.0.0.1:4222?namespace=lab-1").unwrap();
        assert_eq!(
            (url.as_str(), ns.as_deref()),
            ("nats://127.0.0.1:4222", Some("lab-1"))
        );
        let (url, ns) =
            split_url("nats://127.0.0.1:4222?ack_wait_ms=2000&namespace=t_2&replicas=1").unwrap();
        assert_eq!(url, "nats://127.0.0.1:4222?ack_wait_ms=2000&replicas=1");
        assert_eq!(ns.as_deref(), Some("t_2"));
        let (url, ns) = split_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(ns, None);
    }

    #[test]
    fn a_namespace_that_would_change_topic_structure_is_refused() {
        for bad in ["", "a.b", "a b", "a>b", "a*", &"x".repeat(65)] {
            let e = split_url(&format!("nats://h:1?namespace={bad}")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Usage, "{bad:?}");
        }
    }
}
