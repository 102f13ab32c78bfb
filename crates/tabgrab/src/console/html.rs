//! The console's pages: server-rendered HTML, every text from a message or an engine escaped
//! ([`esc`]), a few lines of script only to ask for confirmation and carry the operator
//! token into a form.

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;

use crate::event::KeptLetter;

/// `text` safe inside HTML text and double-quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one URL path segment (ids, topics: letters, digits and a few marks pass).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f4f4f4}.err{color:#a00;max-width:40em;\
overflow-wrap:anywhere}.msg{background:#eef;padding:6px}pre{white-space:pre-wrap;\
overflow-wrap:anywhere;background:#f8f8f8;padding:8px}";

/// Copies the operator token into the form and asks before a redrive or purge.
const SCRIPT: &str = "function act(form,what){form.token.value=\
document.getElementById('token').value;return confirm(what+'?');}";

/// A whole page around `body`.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{}</title>\
         <style>{STYLE}</style><script>{SCRIPT}</script></head><body>\
         <p><a href=\"/\">tabgrab console</a> · operator token \
         <input id=token type=password autocomplete=off></p>{body}</body></html>",
        esc(title)
    )
}

fn when(k: &KeptLetter) -> String {
    k.recorded_at
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// One page of a topic's open dead letters.
pub(crate) fn dead_letters(
    topic: &str,
    letters: &[KeptLetter],
    total: usize,
    page: usize,
    pages: usize,
    note: Option<&str>,
    to_group: bool,
) -> String {
    let mut body = format!("<h1>Dead letters of {}</h1>", esc(topic));
    if let Some(note) = note {
        let _ = write!(body, "<p class=msg id=note>{}</p>", esc(note));
    }
    let _ = write!(
        body,
        "<p id=count>{total} open dead letters; page {} of {}</p>",
        page + 1,
        pages.max(1)
    );
    let base = format!("/topics/{}/dead-letters", segment(topic));
    if total > 0 {
        let _ = write!(
            body,
            "<form method=post action=\"{base}\" \
             onsubmit=\"return act(this,'Redrive all {total} open dead letters')\">\
             <input type=hidden name=token><button id=redrive-all>redrive all</button></form>"
        );
    }
    body.push_str(
        "<table id=letters><tr><th>recorded</th><th>group</th><th>type</th><th>subject</th>\
         <th>reason</th><th>attempts</th><th>last error</th><th></th></tr>",
    );
    for k in letters {
        let l = &k.letter;
        let at = format!("{base}/{}", segment(&k.id));
        // Where the engine can deliver to one group, the group that gave up can have it alone.
        let to_group = if to_group {
            // The group's name is data, never script: the question comes from an attribute.
            format!(
                "<form method=post action=\"{at}/redrive-group\" \
                 data-question=\"Redrive this event to group {g} only\" \
                 onsubmit=\"return act(this,this.dataset.question)\">\
                 <input type=hidden name=token><button>redrive to {g}</button></form>",
                g = esc(&l.group)
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"{at}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=err>{}</td><td>\
             <form method=post action=\"{at}/redrive\" onsubmit=\"return act(this,'Redrive this event')\">\
             <input type=hidden name=token><button>redrive</button></form>{to_group}\
             <form method=post action=\"{at}/purge\" onsubmit=\"return act(this,'Purge this dead letter')\">\
             <input type=hidden name=token><button>purge</button></form></td></tr>",
            esc(&when(k)),
            esc(&l.group),
            esc(l.message_type.as_deref().unwrap_or("(undecodable)")),
            esc(l.subject.as_deref().unwrap_or("")),
            esc(&l.reason),
            l.attempts,
            esc(&l.error),
        );
    }
    body.push_str("</table><p>");
    if page > 0 {
        let _ = write!(body, "<a href=\"{base}?page={}\">newer</a> ", page - 1);
    }
    if page + 1 < pages {
        let _ = write!(body, "<a href=\"{base}?page={}\">older</a>", page + 1);
    }
    body.push_str("</p>");
    page_of(topic, &body)
}

fn page_of(topic: &str, body: &str) -> String {
    page(&format!("dead letters of {topic}"), body)
}

/// One dead letter in full.
pub(crate) fn dead_letter(topic: &str, k: &KeptLetter, event: Option<&crate::Envelope>) -> String {
    let l = &k.letter;
    let mut body = format!("<h1>Dead letter {}</h1><table>", esc(&k.id));
    let mut row = |name: &str, value: &str| {
        let _ = write!(body, "<tr><th>{name}</th><td>{}</td></tr>", esc(value));
    };
    row("recorded", &when(k));
    row("topic", &l.topic);
    row("offset", &l.offset.to_string());
    row("group", &l.group);
    row("reason", &l.reason);
    row("attempts", &l.attempts.to_string());
    row("last error", &l.error);
    row("event id", l.message_id.as_deref().unwrap_or(""));
    row("event type", l.message_type.as_deref().unwrap_or(""));
    row("subject", l.subject.as_deref().unwrap_or(""));
    row(
        "original",
        &format!(
            "{} bytes, sha256 {}{}",
            l.original_size,
            l.original_sha256,
            match (&l.original_truncated, &l.original_kept_at) {
                (true, Some(at)) => format!("; the whole is kept at {at}"),
                _ => String::new(),
            }
        ),
    );
    body.push_str("</table>");
    match event {
        Some(e) => {
            let _ = write!(
                body,
                "<h2>The event</h2><p>source {}</p><pre id=data>{}</pre>",
                esc(&e.source),
                esc(&String::from_utf8_lossy(&e.data))
            );
        }
        None => {
            let bytes = l.excerpt().unwrap_or_default();
            let _ = write!(
                body,
                "<h2>The bytes kept</h2><pre id=data>{}</pre>",
                esc(&String::from_utf8_lossy(&bytes))
            );
        }
    }
    page_of(topic, &body)
}

/// One group of the overview (`None`: the engine cannot say).
pub(crate) struct GroupRow {
    pub(crate) group: String,
    pub(crate) lag: Option<u64>,
    pub(crate) members: Option<u64>,
}

/// One topic of the overview.
pub(crate) struct TopicRow {
    pub(crate) topic: String,
    /// Each group with its lag and members.
    pub(crate) groups: Vec<GroupRow>,
    /// How many dead letters are open, or why that is unknown.
    pub(crate) open: Result<usize, String>,
}

/// The requests section of the overview: counts by state and the oldest in flight.
pub(crate) struct Requests {
    /// The store's name (`sqlite`, `postgres`, `memory`).
    pub(crate) store: &'static str,
    /// Counts, or why they are unknown.
    pub(crate) counts: Result<crate::messaging::store::StoreCounts, String>,
    /// The oldest requests without an outcome, or why they are unknown.
    pub(crate) oldest: Result<Vec<crate::messaging::InFlight>, String>,
    /// Now, Unix milliseconds.
    pub(crate) now_ms: i64,
}

fn requests(r: &Requests) -> String {
    let mut body = format!("<h2>requests ({} correlation store)</h2>", esc(r.store));
    match &r.counts {
        Ok(c) => {
            let _ = write!(
                body,
                "<p id=request-counts>{} pending, {} being finished, {} replied, {} timed out \
                 (tombstones kept until purged)</p><p id=reply-tallies>replies not handed to a \
                 handler: {} late, {} duplicate, {} forged</p>",
                c.pending, c.in_progress, c.replied, c.timed_out, c.late, c.duplicate, c.forged
            );
        }
        Err(e) => {
            let _ = write!(body, "<p class=err>{}</p>", esc(e));
        }
    }
    match &r.oldest {
        Ok(open) if open.is_empty() => body.push_str("<p>no request waits for its reply</p>"),
        Ok(open) => {
            body.push_str(
                "<table id=in-flight><tr><th>request</th><th>type</th><th>to</th>\
                 <th>from group</th><th>age</th><th>deadline in</th><th>state</th></tr>",
            );
            let secs = |ms: i64| format!("{:.1} s", ms as f64 / 1000.0);
            for f in open {
                let q = &f.request;
                let state = match f.state {
                    crate::messaging::store::RecordState::Pending => "waiting".to_owned(),
                    s => format!(
                        "{} (claim for {}{})",
                        s.as_str(),
                        secs(f.lease_until_ms - r.now_ms),
                        f.holder
                            .as_ref()
                            .map(|h| format!(" by {h}"))
                            .unwrap_or_default()
                    ),
                };
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td></tr>",
                    esc(&q.id),
                    esc(&q.request_type),
                    esc(&q.responder),
                    esc(&q.group),
                    secs(r.now_ms - q.sent_ms),
                    secs(q.deadline_ms - r.now_ms),
                    esc(&state)
                );
            }
            body.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(body, "<p class=err>{}</p>", esc(e));
        }
    }
    body
}

/// The overview: each topic's groups with their lag, and its open dead letters; the
/// requests in flight when the console has a correlation store.
pub(crate) fn overview(rows: &[TopicRow], reqs: Option<&Requests>) -> String {
    let mut body = String::from("<h1>tabgrab console</h1>");
    if let Some(r) = reqs {
        body.push_str(&requests(r));
    }
    for TopicRow {
        topic,
        groups,
        open,
    } in rows
    {
        let id = esc(topic);
        let _ = write!(
            body,
            "<h2>topic {id}</h2><p>published <span id=\"published-{id}\">…</span>, \
             <span id=\"rate-{id}\">…</span> a second</p><table class=groups>\
             <tr><th>group</th><th>members</th><th>lag</th><th>settled a second</th></tr>",
        );
        let known = |n: &Option<u64>| n.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        for row in groups {
            let (lag, members) = (known(&row.lag), known(&row.members));
            let g = esc(&row.group);
            let _ = write!(
                body,
                "<tr><td>{g}</td><td id=\"members-{id}-{g}\">{members}</td>\
                 <td id=\"lag-{id}-{g}\">{lag}</td><td id=\"rate-{id}-{g}\">…</td></tr>"
            );
        }
        body.push_str("</table>");
        match open {
            Ok(n) => {
                let _ = write!(
                    body,
                    "<p><a href=\"/topics/{}/dead-letters\">{n} open dead letter{}</a></p>",
                    segment(topic),
                    if *n == 1 { "" } else { "s" }
                );
            }
            Err(e) => {
                let _ = write!(body, "<p class=err>dead letters: {}</p>", esc(e));
            }
        }
    }
    body.push_str(FLOW);
    page("tabgrab console", &body)
}

/// Keeps the overview's counts moving with the events of `GET /flow`; shows `unknown` where
/// the engine cannot count (a rate needs two samples: `…` until then), and `(no flow)` when the stream is lost (the browser reconnects).
const FLOW: &str = "<p id=flow-state>connecting to the live flow…</p><script>\
(function(){const show=function(id,v){const e=document.getElementById(id);\
if(e&&!(v==null&&e.textContent==='…'))e.textContent=v==null?'unknown':(Number.isInteger(v)?String(v):v.toFixed(1));};\
const state=document.getElementById('flow-state');\
const s=new EventSource('/flow');\
s.onmessage=function(m){for(const t of JSON.parse(m.data)){\
show('published-'+t.topic,t.published);show('rate-'+t.topic,t.per_second);\
for(const g of t.groups){show('lag-'+t.topic+'-'+g.group,g.lag);\
show('rate-'+t.topic+'-'+g.group,g.per_second);}}\
state.textContent='live, updated '+new Date().toLocaleTimeString();};\
s.onerror=function(){state.textContent='(no flow: reconnecting)';};})();</script>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_text() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(segment("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
