//! `#[derive(Message)]`: declares a tabgrab message type in one attribute.
//!
//! Use it through `tabgrab` (or `tabgrab-core`), which re-export it beside the trait of the same
//! name; see `tabgrab_core::message` for the message model. One attribute names the type, says
//! what kind of message it is and, for a request, what answers it:
//!
//! ```text
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.payment.charge-card.v1", command, response = Charged)]
//! struct ChargeCard { order_id: String, cents: u64 }
//! ```
//!
//! | attribute | generates |
//! |---|---|
//! | `type = "a.b.vN"` (required) | `Message` with that `TYPE`, checked at compile time |
//! | `event` | `Event` |
//! | `command, response = R` | `Request<Response = R>` with `IS_COMMAND = true`, and `Command` |
//! | `query, response = R` | `Request<Response = R>` with `IS_COMMAND = false`, and `Query` |
//! | `crate = "path"` | names tabgrab's core by that path instead of finding it in `Cargo.toml` |
//!
//! Without a kind the type is a plain `Message` (any payload that travels in an envelope).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{DeriveInput, LitStr, Path, Type, parse_macro_input};

/// Implements `Message` and, by the `#[message(..)]` attribute, `Event`, or `Request` with
/// `Command` or `Query`. See the crate documentation for the attribute.
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// What kind of message the attribute declares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Command,
    Query,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Command => "command",
            Kind::Query => "query",
        }
    }
}

/// The parsed `#[message(..)]` attributes.
#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    kind: Option<Kind>,
    response: Option<Type>,
    krate: Option<Path>,
}

const USAGE: &str = "expected `type = \"namespace.noun.verb.v1\"`, `event`, `command`, `query`, \
                     `response = Type` or `crate = \"path\"`";

fn parse_args(input: &DeriveInput) -> syn::Result<Args> {
    let mut args = Args::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("message")) {
        attr.parse_nested_meta(|meta| {
            let kind = if meta.path.is_ident("event") {
                Some(Kind::Event)
            } else if meta.path.is_ident("command") {
                Some(Kind::Command)
            } else if meta.path.is_ident("query") {
                Some(Kind::Query)
            } else {
                None
            };
            if let Some(kind) = kind {
                if let Some(before) = args.kind {
                    return Err(meta.error(format!(
                        "a message is one kind: already declared `{}`",
                        before.name()
                    )));
                }
                args.kind = Some(kind);
            } else if meta.path.is_ident("type") {
                set_once(&mut args.name, meta.value()?.parse()?, &meta, "type")?;
            } else if meta.path.is_ident("response") {
                set_once(
                    &mut args.response,
                    meta.value()?.parse()?,
                    &meta,
                    "response",
                )?;
            } else if meta.path.is_ident("crate") {
                let path: LitStr = meta.value()?.parse()?;
                set_once(&mut args.krate, path.parse()?, &meta, "crate")?;
            } else {
                return Err(meta.error(format!("unknown message attribute; {USAGE}")));
            }
            Ok(())
        })?;
    }
    Ok(args)
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &syn::meta::ParseNestedMeta<'_>,
    what: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!("`{what}` is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let args = parse_args(input)?;
    let ident = &input.ident;
    let Some(name) = args.name else {
        return Err(syn::Error::new(
            Span::call_site(),
            format!(
                "#[derive(Message)] needs its type name: #[message(type = \"namespace.noun.verb.v1\")] \
                 on `{ident}`"
            ),
        ));
    };
    let response = match (args.kind, args.response) {
        (Some(Kind::Command | Kind::Query), Some(response)) => Some(response),
        (Some(kind @ (Kind::Command | Kind::Query)), None) => {
            return Err(syn::Error::new(
                name.span(),
                format!(
                    "a {} names what answers it: add `response = Type` to #[message(..)] on `{ident}`",
                    kind.name()
                ),
            ));
        }
        (kind, Some(response)) => {
            let what = match kind {
                Some(Kind::Event) => "an event is answered by nobody",
                _ => "only a command or a query has a response",
            };
            return Err(syn::Error::new_spanned(
                response,
                format!("{what}; say `command` or `query`, or remove `response`"),
            ));
        }
        (_, None) => None,
    };
    let krate = match args.krate {
        Some(path) => path,
        None => core_path()?,
    };
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let head = |tr: TokenStream2| {
        quote! { impl #impl_generics #tr for #ident #ty_generics #where_clause }
    };
    let message = head(quote!(#krate::Message));
    let mut out = quote! {
        #message {
            const TYPE: &'static str = #name;
        }
        // The name's rules (`MessageType::parse`), checked when the crate compiles.
        const _: () = #krate::message::assert_type_name(#name);
    };
    match (args.kind, response) {
        (Some(Kind::Event), _) => {
            let event = head(quote!(#krate::Event));
            out.extend(quote! { #event {} });
        }
        (Some(kind @ (Kind::Command | Kind::Query)), Some(response)) => {
            let request = head(quote!(#krate::Request));
            let is_command = kind == Kind::Command;
            let marker = head(if is_command {
                quote!(#krate::Command)
            } else {
                quote!(#krate::Query)
            });
            out.extend(quote! {
                #request {
                    type Response = #response;
                    const IS_COMMAND: bool = #is_command;
                }
                #marker {}
            });
        }
        _ => {}
    }
    Ok(out)
}

/// The path of tabgrab's core in the deriving crate: `tabgrab-core` if it depends on it (or is
/// it), else `tabgrab`, which re-exports the same traits; renamed dependencies are followed.
fn core_path() -> syn::Result<Path> {
    use proc_macro_crate::{FoundCrate, crate_name};
    for (package, ident) in [("tabgrab-core", "tabgrab_core"), ("tabgrab", "tabgrab")] {
        let name = match crate_name(package) {
            // Inside the crate itself (its lib declares `extern crate self as ..`; its tests,
            // examples and doc tests link it under its own name).
            Ok(FoundCrate::Itself) => ident.to_owned(),
            Ok(FoundCrate::Name(name)) => name,
            Err(_) => continue,
        };
        return syn::parse_str(&format!("::{name}"));
    }
    Err(syn::Error::new(
        Span::call_site(),
        "#[derive(Message)] needs `tabgrab` or `tabgrab-core` among this crate's dependencies, \
         or #[message(crate = \"path::to::tabgrab\")]",
    ))
}
