//! The back office ([`crate::backoffice`]) as call handlers: each service's commands, served
//! by tabgrab's call server over HTTP (`POST /commands/{type}`) and gRPC on one port.
//!
//! Each handler hands the command and its envelope to the service, which checks the
//! command's bounds, answers it once per order from its store, and refuses with a typed
//! rejection ([`CARD_DECLINED`](crate::commands::CARD_DECLINED) and the others).

use tabgrab::call::Handlers;

use crate::backoffice::{Courier, Ovens, PaymentDesk, Storeroom};
use crate::commands::{
    ChargeCard, DeliverOrder, PlaceTicket, RefundPayment, ReleaseIngredients, ReserveIngredients,
};

impl PaymentDesk {
    /// The handlers of `ChargeCard` and `RefundPayment`.
    pub fn handlers(&self) -> Handlers {
        Handlers::new()
            .handle_with(self.clone(), |desk, c: ChargeCard, ctx| async move {
                desk.charge(&c, ctx.envelope()).await
            })
            .handle_with(self.clone(), |desk, r: RefundPayment, ctx| async move {
                desk.refund(&r, ctx.envelope()).await
            })
    }
}

impl Storeroom {
    /// The handlers of `ReserveIngredients` and `ReleaseIngredients`.
    pub fn handlers(&self) -> Handlers {
        Handlers::new()
            .handle_with(self.clone(), |room, r: ReserveIngredients, ctx| async move {
                room.reserve(&r, ctx.envelope()).await
            })
            .handle_with(self.clone(), |room, r: ReleaseIngredients, ctx| async move {
                room.release(&r, ctx.envelope()).await
            })
    }
}

impl Ovens {
    /// The handler of `PlaceTicket`.
    pub fn handlers(&self) -> Handlers {
        Handlers::new().handle_with(self.clone(), |kitchen, t: PlaceTicket, _ctx| async move {
            kitchen.bake(&t).await
        })
    }
}

impl Courier {
    /// The handler of `DeliverOrder`.
    pub fn handlers(&self) -> Handlers {
        Handlers::new().handle_with(self.clone(), |courier, d: DeliverOrder, _ctx| async move {
            courier.deliver(&d).await
        })
    }
}
