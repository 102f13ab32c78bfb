//! `pizzeria dead-letters`: list, show, redrive and purge what the services gave up on, on
//! the embedded log of a data directory or on a broker (`--bus`).
//!
//! Everything goes through [`tabgrab::event::DeadLetters`], so the command line does what a
//! user service would: a redrive publishes the original again (same id, so inboxes stay
//! exactly-once) and settles the dead letter only once the bus acknowledged it; a process
//! killed in the middle of a bulk redrive leaves the rest listed, to run again.
//!
//! The texts shown come from messages anyone could have published: control characters are
//! escaped, so a hostile message cannot drive the terminal.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tabgrab::Envelope;
use tabgrab::event::{DeadLetters, Filter, KeptLetter};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, ErrorKind};
use crate::messages::TOPIC;

/// Options of `pizzeria dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Directory of the embedded event log, as given to `pizzeria run` (stop the run first
    /// to redrive or purge: the log has one writer).
    #[arg(long, default_value = "./pizzeria-data", global = true)]
    pub data_dir: PathBuf,
    /// A broker instead of the embedded log: `nats://host:port` or
    /// `amqp://user:pass@host:port/vhost` (with `?namespace=` as given to `pizzeria run`).
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true, global = true)]
    pub bus: Option<String>,
    /// The topic whose dead letters to read: `pizzeria` (the events style), or for the
    /// messaging style `payment`, `inventory`, `kitchen` (requests) and
    /// `replies.front-desk-messaging` (replies, including rejected forged ones).
    #[arg(long, default_value = TOPIC, global = true)]
    pub topic: String,
    /// Only dead letters of this consumer group.
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Only dead letters with this reason (`permanent_error`, `max_deliveries`, `malformed`,
    /// `unknown_type`, `invalid_payload`, …).
    #[arg(long, global = true)]
    pub reason: Option<String>,
    /// Only dead letters of events of this type.
    #[arg(long = "type", global = true)]
    pub message_type: Option<String>,
    /// Only dead letters of events with this subject (an order id in the pizzeria).
    #[arg(long, global = true)]
    pub subject: Option<String>,
    /// Only dead letters recorded at or after this moment (RFC 3339, e.g.
    /// 2026-12-07T10:00:00Z).
    #[arg(long, value_parser = parse_time, global = true)]
    pub since: Option<OffsetDateTime>,
    /// Only dead letters recorded before this moment (RFC 3339).
    #[arg(long, value_parser = parse_time, global = true)]
    pub until: Option<OffsetDateTime>,
    /// What to do; `list` when none is given.
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// What `pizzeria dead-letters` does.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// List the open dead letters (not redriven or purged) that match the filters, with the
    /// id that names each, the group, the event's type, the reason and the last error.
    List,
    /// Show one dead letter in full: its reason, attempts and last error, where the event
    /// came from, and the event's attributes and data (or the bytes kept, if they are not
    /// an event).
    Show {
        /// The dead letter's id, as `list` prints it.
        id: String,
    },
    /// Publish the original events again to their topic (same id: services with an inbox
    /// apply each once) and settle their dead letters once the bus acknowledged each.
    Redrive {
        /// Which dead letters.
        #[command(flatten)]
        selection: Selection,
        /// To the group that gave up on each only, not to the whole topic (RabbitMQ, which
        /// has a queue per group; refused on the embedded bus and NATS).
        #[arg(long)]
        to_group: bool,
    },
    /// Drop dead letters: they are no longer listed.
    Purge(Selection),
}

/// Which dead letters `redrive` and `purge` act on.
#[derive(Debug, Args)]
pub struct Selection {
    /// The dead letters' ids, as `list` prints them.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every open dead letter that matches the filters.
    #[arg(long)]
    pub all: bool,
    /// Say what would be done, and why a dead letter could not be redriven, without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parses an RFC 3339 moment.
fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 moment such as 2026-12-07T10:00:00Z: {e}"))
}

impl DeadLettersArgs {
    fn filter(&self) -> Filter {
        Filter {
            group: self.group.clone(),
            reason: self.reason.clone(),
            message_type: self.message_type.clone(),
            subject: self.subject.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// Runs `pizzeria dead-letters`.
pub async fn command(args: &DeadLettersArgs) -> Result<(), Error> {
    let topic = args.topic.as_str();
    tabgrab::Topic::new(topic).map_err(|e| {
        Error::new(
            ErrorKind::Usage,
            format!("--topic {topic:?} is not a topic name"),
        )
        .with_source(e)
    })?;
    let filter = args.filter();
    let action = args.action.as_ref().unwrap_or(&Action::List);
    let opened = crate::namespace::open(args.bus.as_deref(), &args.data_dir).await?;
    let letters = DeadLetters::new(&opened.bus, topic)?;
    let open = letters.list(&filter).await?;
    let result = match action {
        Action::List => list(topic, &open),
        Action::Show { id } => show(&letters, topic, &open, id),
        Action::Redrive {
            selection,
            to_group: false,
        } => act(&letters, &open, selection, Act::Redrive).await,
        Action::Redrive {
            selection,
            to_group: true,
        } => {
            if !opened.bus.capabilities().reply_queues {
                return Err(Error::new(
                    ErrorKind::Usage,
                    "--to-group needs an engine with a queue per group (RabbitMQ); the \
                     embedded bus and NATS deliver a redrive to every group of the topic \
                     (an inbox makes it harmless to those that had it)",
                ));
            }
            act(&letters, &open, selection, Act::RedriveToGroup).await
        }
        Action::Purge(selection) => act(&letters, &open, selection, Act::Purge).await,
    };
    opened.close().await?;
    result
}

fn out(text: impl AsRef<str>) -> Result<(), Error> {
    writeln!(std::io::stdout().lock(), "{}", text.as_ref())
        .map_err(|e| Error::new(ErrorKind::Io, "cannot write to stdout").with_source(e))
}

/// `text` with control characters escaped (a message's texts are anyone's).
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn when(at: Option<OffsetDateTime>) -> String {
    at.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "(unknown time)".to_owned())
}

fn list(topic: &str, open: &[KeptLetter]) -> Result<(), Error> {
    if open.is_empty() {
        return out(format!("no dead letters in topic {topic}"));
    }
    out(format!("{} dead letters in topic {topic}:", open.len()))?;
    for kept in open {
        let letter = &kept.letter;
        let original = if letter.original_truncated {
            format!(
                "  (original: {} bytes, sha256 {}, kept at {})",
                letter.original_size,
                letter.original_sha256,
                clean(
                    letter
                        .original_kept_at
                        .as_deref()
                        .unwrap_or("an unknown place")
                )
            )
        } else {
            String::new()
        };
        out(format!(
            "{}  {}  offset {:>8}  group {:<10}  type {:<36}  reason {:<16}  attempts {:>2}  error: {}{original}",
            kept.id,
            when(kept.recorded_at),
            letter.offset,
            clean(&letter.group),
            clean(letter.message_type.as_deref().unwrap_or("(undecodable)")),
            letter.reason,
            letter.attempts,
            clean(&letter.error)
        ))?;
    }
    Ok(())
}

fn show(letters: &DeadLetters, topic: &str, open: &[KeptLetter], id: &str) -> Result<(), Error> {
    let Some(kept) = open.iter().find(|k| k.id == id) else {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "topic {topic} has no open dead letter {id:?} that matches the filters \
                 (`pizzeria dead-letters list` shows the ids)"
            ),
        ));
    };
    let l = &kept.letter;
    let opt = |v: &Option<String>| clean(v.as_deref().unwrap_or("(none)"));
    out(format!("dead letter {}", kept.id))?;
    out(format!("  recorded      {}", when(kept.recorded_at)))?;
    out(format!(
        "  from          topic {}, offset {}, group {}",
        clean(&l.topic),
        l.offset,
        clean(&l.group)
    ))?;
    out(format!("  reason        {}", l.reason))?;
    out(format!("  attempts      {}", l.attempts))?;
    out(format!("  last error    {}", clean(&l.error)))?;
    out(format!("  event id      {}", opt(&l.message_id)))?;
    out(format!("  event type    {}", opt(&l.message_type)))?;
    out(format!("  subject       {}", opt(&l.subject)))?;
    out(format!(
        "  original      {} bytes, sha256 {}{}",
        l.original_size,
        l.original_sha256,
        if l.original_truncated {
            format!(
                "; only the first bytes are kept here, the whole is at {}",
                opt(&l.original_kept_at)
            )
        } else {
            String::new()
        }
    ))?;
    match letters.redrivable_event(kept) {
        Ok(envelope) => show_envelope(&envelope),
        Err(_) => out(format!(
            "  bytes kept    {}",
            clean(&String::from_utf8_lossy(&l.excerpt().unwrap_or_default()))
        )),
    }
}

fn show_envelope(e: &Envelope) -> Result<(), Error> {
    out("  the event:")?;
    out(format!("    id          {}", clean(&e.id)))?;
    out(format!("    source      {}", clean(&e.source)))?;
    out(format!("    type        {}", clean(&e.ty)))?;
    out(format!("    time        {}", when(e.time)))?;
    for (name, value) in &e.extensions {
        out(format!("    {:<11} {}", clean(name), clean(value)))?;
    }
    out(format!(
        "    data        {}",
        clean(&String::from_utf8_lossy(&e.data))
    ))
}

/// A bulk action.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Redrive,
    RedriveToGroup,
    Purge,
}

async fn act(
    letters: &DeadLetters,
    open: &[KeptLetter],
    selection: &Selection,
    what: Act,
) -> Result<(), Error> {
    let chosen: Vec<&KeptLetter> = if selection.all {
        open.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for id in &selection.ids {
            match open.iter().find(|k| &k.id == id) {
                Some(kept) => chosen.push(kept),
                None => {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        format!(
                            "no open dead letter {id:?} matches (redriven or purged already? \
                             `pizzeria dead-letters list` shows the ids)"
                        ),
                    ));
                }
            }
        }
        chosen
    };
    let verb = match what {
        Act::Redrive => "redrive",
        Act::RedriveToGroup => "redrive to its group",
        Act::Purge => "purge",
    };
    if selection.dry_run {
        let mut refused = 0;
        for kept in &chosen {
            let check = match what {
                Act::Redrive | Act::RedriveToGroup => letters.check_redrivable(kept),
                Act::Purge => Ok(()),
            };
            match check {
                Ok(()) => out(format!("would {verb} {}", kept.id))?,
                Err(e) => {
                    refused += 1;
                    out(format!(
                        "cannot {verb} {}: {}",
                        kept.id,
                        clean(&e.to_string())
                    ))?;
                }
            }
        }
        return out(format!(
            "dry run: would {verb} {} of {} dead letters; nothing was changed",
            chosen.len() - refused,
            chosen.len()
        ));
    }
    let bar = ProgressBar::new(chosen.len() as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({eta} left)") {
        bar.set_style(style);
    }
    bar.set_message(format!("{verb}:"));
    let mut failed: Vec<String> = Vec::new();
    let mut done = 0_usize;
    for kept in &chosen {
        let result = match what {
            Act::Redrive => letters.redrive_letter(kept).await.map(|_| ()),
            Act::RedriveToGroup => letters.redrive_to_group(kept).await.map(|_| ()),
            Act::Purge => letters.purge_letter(kept).await,
        };
        match result {
            Ok(()) => done += 1,
            Err(e) => failed.push(format!("{}: {}", kept.id, clean(&e.to_string()))),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let past = match what {
        Act::Redrive => "redriven",
        Act::RedriveToGroup => "redriven to their group",
        Act::Purge => "purged",
    };
    out(format!("{done} of {} dead letters {past}", chosen.len()))?;
    if failed.is_empty() {
        return Ok(());
    }
    for line in &failed {
        out(format!("not {past}: {line}"))?;
    }
    Err(Error::new(
        ErrorKind::Bus,
        format!(
            "{} of {} dead letters could not be {past} (listed above; they stay listed)",
            failed.len(),
            chosen.len()
        ),
    ))
}
