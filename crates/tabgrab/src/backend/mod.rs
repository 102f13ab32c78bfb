//! Backends carry envelopes between services. Today: [`embedded`], the in-process default that
//! needs no server. NATS and RabbitMQ follow behind the `nats` and `amqp` features.

pub mod embedded;
