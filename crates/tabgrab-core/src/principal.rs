//! Who sent a message: a [`Principal`], the one identity every kind of communication carries,
//! and the one admission rule that calls, consumers and responders apply to it.
//!
//! - **Calls** establish the principal themselves: the call server's authenticator proves it
//!   from the call's credentials (a bearer token, a client certificate), and the server writes
//!   it into the envelope the handler receives, removing whatever `principal` attribute the
//!   caller sent.
//! - **Bus messages** carry it as the CloudEvents extension attribute `principal`
//!   ([`ATTRIBUTE`]): set with [`Envelope::with_principal`], read with
//!   [`Envelope::principal`]. An envelope made [`caused_by`](Envelope::caused_by) another
//!   inherits its principal, so the identity of an authenticated call travels on to the
//!   events and requests its handler sends, through every hop, unless a hop sets its own.
//! - **Requiring it**: a consumer or responder given an admission rule refuses a message that
//!   carries no principal (`Unauthenticated`) or whose principal the rule does not allow for
//!   the message's type (`PermissionDenied`), before any handler runs ([`admit`]); a consumer
//!   dead-letters it with that reason, a responder answers the requester with a rejection of
//!   that code.
//!
//! **What the principal on a bus message proves.** It is what the publisher asserts. The bus
//! does not sign it: it can be trusted as far as everyone allowed to publish on the topic is
//! trusted. Let the broker decide who may publish (NATS users or accounts with subject
//! permissions, RabbitMQ users with write permissions on the exchange) and connect each
//! service with its own credentials (see `docs/engines.md`); on the embedded bus every
//! publisher is in the same process.

use std::sync::Arc;

use crate::{Envelope, Error, ErrorKind};

/// The CloudEvents extension attribute that carries the principal on the bus.
pub const ATTRIBUTE: &str = "principal";

/// Who sends a message or a call, as an authenticator established it (calls) or its publisher
/// asserts it (bus messages; see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    name: Arc<str>,
}

impl Principal {
    /// A principal called `name` (a service, a user, a client certificate's subject).
    pub fn new(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into().into(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// An admission rule: whether `principal` may send a message of type `ty`.
pub type Rule = dyn Fn(&Principal, &str) -> bool + Send + Sync;

/// The one admission check of calls, consumers and responders: a message of type `ty` from
/// `principal` is admitted when it has a principal and `rule` (if any) allows it that type.
///
/// `Unauthenticated` when there is no principal, `PermissionDenied` when the rule refuses it;
/// the message names the type and the principal (never a credential).
///
/// ```
/// use tabgrab_core::principal::{Principal, admit};
/// use tabgrab_core::ErrorKind;
///
/// let kitchen = Principal::new("kitchen");
/// let rule = |p: &Principal, ty: &str| p.name() == "kitchen" || !ty.starts_with("pizzeria.payment.");
/// assert!(admit(Some(&kitchen), "pizzeria.payment.charge.v1", Some(&rule)).is_ok());
/// let guest = Principal::new("guest");
/// let denied = admit(Some(&guest), "pizzeria.payment.charge.v1", Some(&rule)).unwrap_err();
/// assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
/// let anonymous = admit(None, "pizzeria.order.placed.v1", Some(&rule)).unwrap_err();
/// assert_eq!(anonymous.kind(), ErrorKind::Unauthenticated);
/// ```
pub fn admit(principal: Option<&Principal>, ty: &str, rule: Option<&Rule>) -> Result<(), Error> {
    let Some(who) = principal else {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            format!("{ty} refused: it comes from no proven principal"),
        ));
    };
    match rule {
        Some(rule) if !rule(who, ty) => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("{ty} refused: {who} may not send it"),
        )),
        _ => Ok(()),
    }
}

impl Envelope {
    /// The principal this envelope carries (its `principal` attribute), if any.
    pub fn principal(&self) -> Option<Principal> {
        self.extensions
            .get(ATTRIBUTE)
            .filter(|name| !name.is_empty())
            .map(|name| Principal::new(name.as_str()))
    }

    /// Carries `principal` (sets the `principal` attribute, replacing any it had).
    pub fn with_principal(mut self, principal: &Principal) -> Envelope {
        self.set_principal(Some(principal));
        self
    }

    /// Sets the `principal` attribute to `principal`, or removes it when `None`: a server
    /// that establishes who sent a message replaces whatever the sender claimed.
    pub fn set_principal(&mut self, principal: Option<&Principal>) {
        match principal {
            Some(who) => {
                self.extensions
                    .insert(ATTRIBUTE.to_owned(), who.name().to_owned());
            }
            None => {
                self.extensions.remove(ATTRIBUTE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Codec;

    #[test]
    fn the_principal_survives_both_content_modes_and_is_inherited_by_effects() {
        let codec = Codec::default();
        let web = Principal::new("web");
        let order =
            Envelope::raw("/t", "t.order.v1", Bytes::from_static(b"{}")).with_principal(&web);
        let structured = codec.decode(&codec.encode(&order).unwrap()).unwrap();
        assert_eq!(structured.principal(), Some(web.clone()));
        let (headers, body) = codec.encode_binary(&order).unwrap();
        let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
        let binary = codec.decode_binary(pairs, body).unwrap();
        assert_eq!(binary.principal(), Some(web.clone()));

        let effect =
            Envelope::raw("/t", "t.effect.v1", Bytes::from_static(b"{}")).caused_by(&order);
        assert_eq!(effect.principal(), Some(web.clone()));
        let own = Principal::new("kitchen");
        let overridden = Envelope::raw("/t", "t.effect.v1", Bytes::from_static(b"{}"))
            .with_principal(&own)
            .caused_by(&order);
        assert_eq!(overridden.principal(), Some(own));

        let mut forged = order.clone();
        forged.set_principal(None);
        assert_eq!(forged.principal(), None);
        assert!(!forged.extensions.contains_key(ATTRIBUTE));
    }

    #[test]
    fn admission_needs_a_principal_and_the_rules_consent() {
        let anyone: Option<&Rule> = None;
        let p = Principal::new("p");
        assert!(admit(Some(&p), "a.v1", anyone).is_ok());
        let e = admit(None, "a.v1", anyone).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("a.v1"), "{e}");
        let only_b = |_: &Principal, ty: &str| ty == "b.v1";
        let e = admit(Some(&p), "a.v1", Some(&only_b)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("p may not send it"), "{e}");
        assert!(admit(Some(&p), "b.v1", Some(&only_b)).is_ok());
    }
}
