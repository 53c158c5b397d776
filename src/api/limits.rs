//! Query limits (the `[graphql]` settings), and the codes of requests refused
//! before they run: over HTTP and both websocket protocols alike, because
//! every request passes the schema's extension [`QueryLimits`].
//!
//! A document is checked three times, each check cheaper than what follows
//! it, so that nothing expensive is done for a document that is refused:
//!
//! 1. [`scan`], on its text, before it is parsed: the aliases written, the
//!    root fields an operation writes, the fields written in operations and
//!    the nesting of selection sets, counted in one pass over the tokens that
//!    stops at the first limit crossed. Parsing is the expensive part of a
//!    large document (pest takes ~130 ms per MiB optimised, over a second
//!    in a debug build), so a flood of aliases or fields is refused
//!    without it. What the scan counts is a lower bound of what the walk
//!    measures (it does not expand fragments), so it never refuses what the
//!    walk would let through.
//! 2. [`walk`], on the parsed document, before async-graphql sees it: depth,
//!    complexity and root fields with fragments expanded, nesting, fragment
//!    cycles and introspection. Each fragment is measured once and
//!    remembered: async-graphql's own walks (its recursion-depth check, its
//!    depth and complexity visitors) expand a fragment at every spread, so a
//!    small document of fragments that spread the next one twice ("fragment
//!    bomb") cost them 2^n visits (64 s of CPU in a debug build for n = 24).
//! 3. async-graphql's validation, whose errors get `GRAPHQL_VALIDATION_FAILED`.
//!
//! The HTTP endpoint parses a document itself before it hands it on (see
//! `api::http`), so it runs [`scan`] before that parse, through [`Limited`];
//! its parse errors get their code from [`parse_failed`], like the
//! extension's. Batches (`BATCH_NOT_SUPPORTED`) are refused there too: only
//! HTTP has them.
//!
//! The measures are async-graphql's: depth counts fields (`__typename` not,
//! fragments not), as its `limit_depth` did; complexity counts every field
//! selected once fragments are expanded (`__typename` too, so that a bomb of
//! `__typename`s is not free), which is async-graphql's complexity (no field
//! of vman's schema has a complexity of its own) plus the `__typename`s.

use std::{collections::HashMap, sync::Arc};

use async_graphql::{
    ObjectType, Pos, Positioned, Request, Schema, ServerError, ServerResult, SubscriptionType,
    ValidationResult,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextValidation,
    },
    parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet},
};

use crate::{config::GraphqlConfig, error::RequestError};

/// Most levels of selection sets (fields', inline fragments', spread
/// fragments') below an operation's: async-graphql's recursion-depth limit
/// (set to this on the schema), which guards its recursive walks.
pub const NESTING_LIMIT: usize = 32;

/// The limits, as the schema's extension and as schema data (for
/// [`Limited`]).
#[derive(Debug, Clone)]
pub struct QueryLimits(Arc<GraphqlConfig>);

impl QueryLimits {
    pub fn new(config: &GraphqlConfig) -> QueryLimits {
        QueryLimits(Arc::new(config.clone()))
    }

    pub fn config(&self) -> &GraphqlConfig {
        &self.0
    }
}

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Extension for QueryLimits {
    /// Before async-graphql parses the document (or, over HTTP, takes the
    /// one parsed there) and walks it.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // Over HTTP the text was scanned already; scanning is cheap next
        // to parsing, and the request does not say whether it was.
        scan(&request.query, self.config())?;
        let document = request.parsed_query().map_err(parse_failed)?;
        walk(document, self.config())?;
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|error| RequestError::ValidationFailed.tag(error))
                .collect()
        })
    }
}

/// An executor that may carry query limits, so that the HTTP endpoint can
/// [`scan`] a document before it parses it.
pub trait Limited {
    fn query_limits(&self) -> Option<&GraphqlConfig>;
}

impl<Q, M, S> Limited for Schema<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    fn query_limits(&self) -> Option<&GraphqlConfig> {
        self.data::<QueryLimits>().map(QueryLimits::config)
    }
}

/// A parse error with its code: `QUERY_TOO_DEEP` when the parser gave up on
/// the nesting (it stops at 64 levels), else `GRAPHQL_PARSE_FAILED`.
/// async-graphql's message is kept.
pub fn parse_failed(error: ServerError) -> ServerError {
    // `Request::parsed_query` hands the parser's error on as a message only.
    let too_deep = async_graphql::parser::Error::RecursionLimitExceeded.to_string();
    if error.message == too_deep {
        RequestError::QueryTooDeep.tag(error)
    } else {
        RequestError::ParseFailed.tag(error)
    }
}

// ---------------------------------------------------------------------------
// The scan of the text

/// What the previous token was, as far as telling fields apart needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// A name that starts a field: its name, or its alias.
    Field,
    /// `:` after an alias: the field's name follows.
    Colon,
    /// `...`: a fragment's name, or `on`, follows.
    Spread,
    /// `on` after `...`: a type follows.
    On,
    /// `@`: a directive's name follows.
    At,
    Other,
}

/// Counts, on the text of a document and in one pass over its tokens, what
/// can be counted before it is parsed, and stops at the first limit crossed.
/// Values (arguments, variables' defaults) are inside parentheses, and
/// nothing inside them is counted; every `{` outside them opens a selection
/// set. A text that is not GraphQL is counted as well as it goes: the parser
/// refuses it next, if no limit does first.
pub fn scan(query: &str, limits: &GraphqlConfig) -> Result<(), ServerError> {
    let bytes = query.as_bytes();
    let at = |offset: usize| Some(position(query, offset));
    let mut i = 0;
    // Open parentheses; open selection sets.
    let mut parens = 0usize;
    let mut depth = 0usize;
    // Between definitions: whether the next one is a fragment's is known
    // from its first word.
    let mut definition: Option<bool> = None;
    let mut in_operation = false;
    let mut prev = Prev::Other;
    // Where the last name that starts a field is: an alias, if `:` follows.
    let mut field_at = 0;
    let (mut aliases, mut root_fields, mut fields) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        let start = i;
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i = skip_string(bytes, i);
                prev = Prev::Other;
            }
            b'(' => {
                i += 1;
                parens += 1;
                prev = Prev::Other;
            }
            b')' => {
                i += 1;
                parens = parens.saturating_sub(1);
                prev = Prev::Other;
            }
            // An object value: inside parentheses.
            b'{' | b'}' if parens > 0 => i += 1,
            b'{' => {
                i += 1;
                if depth == 0 {
                    in_operation = definition != Some(true);
                    root_fields = 0;
                }
                depth += 1;
                if depth - 1 > NESTING_LIMIT {
                    return Err(too_nested(at(start)));
                }
                prev = Prev::Other;
            }
            b'}' => {
                i += 1;
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    definition = None;
                }
                prev = Prev::Other;
            }
            b'.' if bytes[i..].starts_with(b"...") => {
                i += 3;
                prev = Prev::Spread;
            }
            b'@' => {
                i += 1;
                prev = Prev::At;
            }
            b':' => {
                i += 1;
                if parens == 0 && depth > 0 && prev == Prev::Field {
                    aliases += 1;
                    if aliases > limits.max_aliases {
                        return Err(RequestError::TooManyAliases.error(
                            format!(
                                "Query has too many aliases (more than {0}); the limit is {0}.",
                                limits.max_aliases
                            ),
                            at(field_at),
                        ));
                    }
                }
                prev = Prev::Colon;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let name = &bytes[start..i];
                if parens > 0 {
                    prev = Prev::Other;
                    continue;
                }
                if depth == 0 {
                    definition.get_or_insert(name == b"fragment");
                    prev = Prev::Other;
                    continue;
                }
                prev = match prev {
                    Prev::Spread if name == b"on" => Prev::On,
                    Prev::Spread | Prev::On | Prev::At | Prev::Colon => Prev::Other,
                    Prev::Field | Prev::Other => {
                        if in_operation {
                            fields += 1;
                            if fields > limits.max_complexity {
                                return Err(too_complex(
                                    format!("more than {}", limits.max_complexity),
                                    limits,
                                    at(start),
                                ));
                            }
                            if depth == 1 {
                                root_fields += 1;
                                if root_fields > limits.max_root_fields {
                                    return Err(too_many_root_fields(
                                        format!("more than {}", limits.max_root_fields),
                                        limits,
                                        at(start),
                                    ));
                                }
                            }
                        }
                        field_at = start;
                        Prev::Field
                    }
                };
            }
            // A number (only in values), or a punctuator that tells nothing here.
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
                prev = Prev::Other;
            }
            _ => {
                i += 1;
                prev = Prev::Other;
            }
        }
    }
    Ok(())
}

/// The type of the operation a request runs (the one `operation_name`
/// names, or the document's only one), read from the text's top level
/// without parsing it: parsing is what [`scan`] exists to put off. `None`
/// when the text names no such operation (the schema says why, with its
/// code, when it runs it).
pub fn operation_type(query: &str, operation_name: Option<&str>) -> Option<OperationType> {
    let bytes = query.as_bytes();
    let (mut i, mut depth, mut parens) = (0usize, 0usize, 0usize);
    // At depth 0: whether the next word starts a definition, and the
    // operation keyword seen that waits for its name or its selection set.
    let mut at_definition = true;
    let mut keyword: Option<OperationType> = None;
    let mut found: Vec<(OperationType, Option<&str>)> = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' => i = skip_string(bytes, i),
            b'(' => {
                parens += 1;
                i += 1;
            }
            b')' => {
                parens = parens.saturating_sub(1);
                i += 1;
            }
            b'{' if parens == 0 => {
                if depth == 0 {
                    if at_definition {
                        found.push((OperationType::Query, None));
                    } else if let Some(ty) = keyword.take() {
                        found.push((ty, None));
                    }
                    at_definition = false;
                }
                depth += 1;
                i += 1;
            }
            b'}' if parens == 0 => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    at_definition = true;
                    keyword = None;
                }
                i += 1;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = i;
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                if depth > 0 || parens > 0 {
                    continue;
                }
                let word = &query[start..i];
                if at_definition {
                    keyword = match word {
                        "query" => Some(OperationType::Query),
                        "mutation" => Some(OperationType::Mutation),
                        "subscription" => Some(OperationType::Subscription),
                        _ => None,
                    };
                    at_definition = false;
                } else if let Some(ty) = keyword.take() {
                    found.push((ty, Some(word)));
                }
            }
            _ => i += 1,
        }
    }
    match operation_name {
        Some(name) => found
            .into_iter()
            .find(|(_, n)| *n == Some(name))
            .map(|(ty, _)| ty),
        None if found.len() == 1 => Some(found[0].0),
        None => None,
    }
}

/// The end of the string that starts at `start` (`"…"` or `"""…"""`); the
/// end of the text when it is not closed.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    if bytes[start..].starts_with(b"\"\"\"") {
        let mut i = start + 3;
        while i < bytes.len() {
            if bytes[i..].starts_with(b"\\\"\"\"") {
                i += 4;
            } else if bytes[i..].starts_with(b"\"\"\"") {
                return i + 3;
            } else {
                i += 1;
            }
        }
        return bytes.len();
    }
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            // A string does not span lines: the parser will refuse this one.
            b'\n' | b'\r' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The line and column (1-based, in characters) of a byte offset; only
/// computed for an error.
fn position(text: &str, offset: usize) -> Pos {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

// ---------------------------------------------------------------------------
// The walk of the parsed document

/// What a selection set selects, its fragments expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    /// Fields, `__typename` included (complexity).
    fields: usize,
    /// Fields at this level, through fragments (root fields).
    top: usize,
    /// Deepest field nesting, `__typename` not counted (depth).
    depth: usize,
    /// Levels of selection sets below this one (nesting).
    nesting: usize,
}

enum Fragment {
    /// Being measured: spreading it again is a cycle.
    Measuring,
    Measured(Measure),
}

struct Walk<'a> {
    document: &'a ExecutableDocument,
    introspection: bool,
    fragments: HashMap<&'a str, Fragment>,
}

/// Measures a parsed document against the limits: every operation, and each
/// fragment they spread once. Refuses, besides the limits, a fragment that
/// spreads itself (async-graphql's validation would, but only after its
/// recursion-depth check has expanded the cycle down to its limit).
pub fn walk(document: &ExecutableDocument, limits: &GraphqlConfig) -> Result<(), ServerError> {
    let mut walk = Walk {
        document,
        introspection: limits.introspection,
        fragments: HashMap::new(),
    };
    let mut fields = 0usize;
    for (_, operation) in document.operations.iter() {
        let measure = walk.selection_set(&operation.node.selection_set, 0)?;
        let at = Some(operation.pos);
        if measure.top > limits.max_root_fields {
            return Err(too_many_root_fields(measure.top.to_string(), limits, at));
        }
        if measure.depth > limits.max_depth {
            return Err(RequestError::QueryTooDeep.error(
                format!(
                    "Query is nested too deep ({} levels of fields); the limit is {}.",
                    measure.depth, limits.max_depth
                ),
                at,
            ));
        }
        fields = fields.saturating_add(measure.fields);
        if fields > limits.max_complexity {
            let count = if fields == usize::MAX {
                format!("more than {}", limits.max_complexity)
            } else {
                fields.to_string()
            };
            return Err(too_complex(count, limits, at));
        }
    }
    Ok(())
}

impl<'a> Walk<'a> {
    /// `set`, `level` levels of selection sets below its operation's.
    fn selection_set(
        &mut self,
        set: &'a Positioned<SelectionSet>,
        level: usize,
    ) -> Result<Measure, ServerError> {
        if level > NESTING_LIMIT {
            return Err(too_nested(Some(set.pos)));
        }
        let mut measure = Measure::default();
        for item in &set.node.items {
            let inner = match &item.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    if !self.introspection && (name == "__schema" || name == "__type") {
                        return Err(RequestError::IntrospectionDisabled.error(
                            format!(
                                "Introspection is disabled on this server: {name} is not served."
                            ),
                            Some(field.pos),
                        ));
                    }
                    let below = &field.node.selection_set;
                    let inner = if below.node.items.is_empty() {
                        Measure::default()
                    } else {
                        let inner = self.selection_set(below, level + 1)?;
                        Measure {
                            nesting: inner.nesting + 1,
                            ..inner
                        }
                    };
                    measure.fields = measure
                        .fields
                        .saturating_add(1)
                        .saturating_add(inner.fields);
                    measure.top = measure.top.saturating_add(1);
                    let counted = usize::from(name != "__typename");
                    measure.depth = measure.depth.max(inner.depth + counted);
                    measure.nesting = measure.nesting.max(inner.nesting);
                    continue;
                }
                Selection::InlineFragment(inline) => {
                    self.selection_set(&inline.node.selection_set, level + 1)?
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name;
                    match self.fragment(name.node.as_str(), name.pos, level + 1)? {
                        Some(inner) => inner,
                        // Unknown: validation says so.
                        None => continue,
                    }
                }
            };
            // A fragment's fields are selected at this level.
            measure.fields = measure.fields.saturating_add(inner.fields);
            measure.top = measure.top.saturating_add(inner.top);
            measure.depth = measure.depth.max(inner.depth);
            measure.nesting = measure.nesting.max(inner.nesting + 1);
        }
        Ok(measure)
    }

    /// The fragment `name`, spread so that its selection set is `level`
    /// levels deep: measured the first time, remembered after.
    fn fragment(
        &mut self,
        name: &'a str,
        at: Pos,
        level: usize,
    ) -> Result<Option<Measure>, ServerError> {
        match self.fragments.get(name) {
            Some(Fragment::Measured(measure)) => {
                if level + measure.nesting > NESTING_LIMIT {
                    return Err(too_nested(Some(at)));
                }
                return Ok(Some(*measure));
            }
            Some(Fragment::Measuring) => {
                // async-graphql's message for it (`NoFragmentCycles`).
                return Err(RequestError::ValidationFailed
                    .error(format!("Cannot spread fragment \"{name}\""), Some(at)));
            }
            None => {}
        }
        let Some((name, definition)) = self.document.fragments.get_key_value(name) else {
            return Ok(None);
        };
        self.fragments.insert(name.as_str(), Fragment::Measuring);
        let measure = self.selection_set(&definition.node.selection_set, level)?;
        self.fragments
            .insert(name.as_str(), Fragment::Measured(measure));
        Ok(Some(measure))
    }
}

fn too_nested(at: Option<Pos>) -> ServerError {
    RequestError::QueryTooDeep.error(
        format!(
            "Query is nested too deep (more than {NESTING_LIMIT} levels of selection sets and fragments)."
        ),
        at,
    )
}

fn too_complex(count: String, limits: &GraphqlConfig, at: Option<Pos>) -> ServerError {
    RequestError::QueryTooComplex.error(
        format!(
            "Query is too complex ({count} fields, fragments expanded); the limit is {}.",
            limits.max_complexity
        ),
        at,
    )
}

fn too_many_root_fields(count: String, limits: &GraphqlConfig, at: Option<Pos>) -> ServerError {
    RequestError::TooManyRootFields.error(
        format!(
            "Operation selects too many root fields ({count}); the limit is {}.",
            limits.max_root_fields
        ),
        at,
    )
}

#[cfg(test)]
mod tests {
    use async_graphql::{EmptySubscription, Object, Schema};

    use super::*;

    fn lenient() -> GraphqlConfig {
        GraphqlConfig {
            max_depth: NESTING_LIMIT,
            max_complexity: 1_000_000,
            max_aliases: 100_000,
            max_root_fields: 10_000,
            introspection: true,
        }
    }

    fn code(error: &ServerError) -> String {
        let extensions = serde_json::to_value(&error.extensions).unwrap();
        extensions["code"].as_str().unwrap_or_default().to_string()
    }

    fn document(text: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(text).unwrap()
    }

    /// Both checks, as the extension runs them.
    fn check(text: &str, limits: &GraphqlConfig) -> Result<(), ServerError> {
        scan(text, limits)?;
        walk(&document(text), limits)
    }

    #[test]
    fn values_strings_and_comments_hold_no_aliases_or_fields() {
        let text = r#"query Q($a: In = {x: 1, y: "{ z: w }"}, $b: [Int!] = [1, -2.5e3]) @d(k: {v: ":"}) {
            f(a: {b: {c: 1}}, s: """ { block: "string" \""" } """, t: "\"{ q: r }\\") # { x: y }
            g @include(if: $b) { h }
        }"#;
        let limits = GraphqlConfig {
            max_aliases: 0,
            max_root_fields: 2,
            max_complexity: 3,
            ..lenient()
        };
        check(text, &limits).unwrap();
        let tighter = GraphqlConfig {
            max_complexity: 2,
            ..limits
        };
        assert_eq!(
            code(&scan(text, &tighter).unwrap_err()),
            "QUERY_TOO_COMPLEX"
        );
    }

    #[test]
    fn the_scan_stops_at_the_first_limit_crossed_and_says_where() {
        let limits = GraphqlConfig {
            max_aliases: 2,
            ..lenient()
        };
        let text = "{\n  a: x\n  b: y ... on Query { c: z } d: w }";
        let error = scan(text, &limits).unwrap_err();
        assert_eq!(code(&error), "TOO_MANY_ALIASES");
        assert_eq!(
            error.locations,
            [Pos {
                line: 3,
                column: 23
            }]
        );
        assert_eq!(
            error.message,
            "Query has too many aliases (more than 2); the limit is 2."
        );

        // Root fields are counted per operation, and not in fragments.
        let limits = GraphqlConfig {
            max_root_fields: 2,
            ..lenient()
        };
        let text = "query A { a b } query B { c d } fragment F on Query { e f g }";
        check(text, &limits).unwrap();
        let error = scan("mutation { a b c }", &limits).unwrap_err();
        assert_eq!(code(&error), "TOO_MANY_ROOT_FIELDS");
        assert_eq!(
            error.locations,
            [Pos {
                line: 1,
                column: 16
            }]
        );
        // Through a fragment, only the walk sees them.
        let text = "{ a ...F } fragment F on Query { b c }";
        scan(text, &limits).unwrap();
        let error = walk(&document(text), &limits).unwrap_err();
        assert_eq!(code(&error), "TOO_MANY_ROOT_FIELDS");

        let deep = format!("{}x{}", "{ a ".repeat(40), " }".repeat(40));
        assert_eq!(
            code(&scan(&deep, &lenient()).unwrap_err()),
            "QUERY_TOO_DEEP"
        );
    }

    #[test]
    fn fragments_are_measured_once() {
        // 2^30 fields once expanded: measured in 31 steps.
        let mut text = "{ x { ...F0 } }".to_string();
        for k in 0..30 {
            text.push_str(&format!(
                " fragment F{k} on Query {{ ...F{0} ...F{0} }}",
                k + 1
            ));
        }
        text.push_str(" fragment F30 on Query { a }");
        let error = check(&text, &lenient()).unwrap_err();
        assert_eq!(code(&error), "QUERY_TOO_COMPLEX");
        assert!(
            error.message.contains("(1073741825 fields"),
            "{}",
            error.message
        );
        // Wider still: the count saturates.
        let mut text = "{ x { ...F0 } }".to_string();
        for k in 0..30 {
            let spreads = format!(" ...F{}", k + 1).repeat(1000);
            text.push_str(&format!(" fragment F{k} on Query {{{spreads} }}"));
        }
        text.push_str(" fragment F30 on Query { a }");
        let error = check(&text, &lenient()).unwrap_err();
        assert!(
            error.message.contains("(more than 1000000 fields"),
            "{}",
            error.message
        );
    }

    #[test]
    fn fragment_cycles_and_nesting_through_fragments_are_refused() {
        for text in [
            "{ ...F } fragment F on Query { a ...F }",
            "{ ...F } fragment F on Query { ... on Query { x { ...G } } } fragment G on X { ...F }",
        ] {
            let error = check(text, &lenient()).unwrap_err();
            assert_eq!(code(&error), "GRAPHQL_VALIDATION_FAILED", "{text}");
            assert!(
                error.message.starts_with("Cannot spread fragment"),
                "{text}"
            );
        }
        // 20 fragments, each two levels deeper than the one it spreads: 40
        // levels of nesting, though no selection set is written deeper than 3.
        let mut text = "{ ...F0 }".to_string();
        for k in 0..20 {
            text.push_str(&format!(
                " fragment F{k} on Query {{ ... {{ ... {{ ...F{} }} }} }}",
                k + 1
            ));
        }
        text.push_str(" fragment F20 on Query { a }");
        scan(&text, &lenient()).unwrap();
        let error = walk(&document(&text), &lenient()).unwrap_err();
        assert_eq!(code(&error), "QUERY_TOO_DEEP");
        // F10 reaches 31 levels spread at the top: fine. Spread again four
        // levels lower, the remembered measure is held to the limit too.
        let fragments = &text["{ ...F0 }".len()..];
        walk(&document(&format!("{{ ...F10 }}{fragments}")), &lenient()).unwrap();
        let text =
            format!("{{ ...F10 ... {{ ... {{ ... {{ ... {{ ...F10 }} }} }} }} }}{fragments}");
        assert_eq!(
            code(&walk(&document(&text), &lenient()).unwrap_err()),
            "QUERY_TOO_DEEP"
        );
    }

    #[test]
    fn introspection_fields_are_refused_when_it_is_off() {
        let off = GraphqlConfig {
            introspection: false,
            ..lenient()
        };
        for text in [
            "{ __schema { queryType { name } } }",
            "{ ...F } fragment F on Query { t: __type(name: \"Query\") { name } }",
        ] {
            assert_eq!(
                code(&check(text, &off).unwrap_err()),
                "INTROSPECTION_DISABLED"
            );
            check(text, &lenient()).unwrap();
        }
        check("{ __typename a { __typename } }", &off).unwrap();
    }

    #[test]
    fn parse_failures_have_codes() {
        let failed = |text: &str| {
            let error = async_graphql::parser::parse_query(text).unwrap_err();
            parse_failed(ServerError::from(error))
        };
        assert_eq!(code(&failed("{")), "GRAPHQL_PARSE_FAILED");
        let deep = format!("{}x{}", "{ a ".repeat(100), " }".repeat(100));
        let error = failed(&deep);
        assert_eq!(code(&error), "QUERY_TOO_DEEP");
        assert_eq!(error.message, "recursion limit exceeded.");
    }

    #[derive(Clone)]
    struct Query;

    #[Object]
    impl Query {
        async fn value(&self) -> i32 {
            1
        }
        async fn node(&self) -> Query {
            Query
        }
        async fn nodes(&self, first: Option<i32>) -> Vec<Query> {
            vec![Query; first.unwrap_or(0) as usize]
        }
    }

    /// The smallest limit `accepts` accepts.
    async fn smallest<F, Fut>(accepts: F) -> usize
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for limit in 0..100 {
            if accepts(limit).await {
                return limit;
            }
        }
        panic!("no limit up to 100 accepts it");
    }

    /// Depth and complexity are measured as async-graphql's `limit_depth`
    /// and `limit_complexity` measured them (for documents without
    /// `__typename`, which its complexity leaves out).
    #[tokio::test]
    async fn the_measures_are_async_graphqls() {
        let documents = [
            "{ value }",
            "{ node { node { value } } nodes { value } }",
            "{ a: node { ... on Query { node { value } } } b: nodes(first: 2) { ...F } } fragment F on Query { node { node { node { value } } } value }",
            "query A { node { value } } query B { nodes { nodes { value } } }",
            "{ ...F ...F node { ...F } } fragment F on Query { value node { value } }",
        ];
        for text in documents {
            let ours = smallest(|max_depth| async move {
                walk(
                    &document(text),
                    &GraphqlConfig {
                        max_depth,
                        ..lenient()
                    },
                )
                .is_ok()
            })
            .await;
            let theirs = smallest(|depth| async move {
                let schema = Schema::build(Query, async_graphql::EmptyMutation, EmptySubscription)
                    .limit_depth(depth)
                    .finish();
                let response = schema.execute(text).await;
                !response
                    .errors
                    .iter()
                    .any(|e| e.message == "Query is nested too deep.")
            })
            .await;
            assert_eq!(ours, theirs, "depth of {text}");

            let ours = smallest(|max_complexity| async move {
                walk(
                    &document(text),
                    &GraphqlConfig {
                        max_complexity,
                        ..lenient()
                    },
                )
                .is_ok()
            })
            .await;
            let theirs = smallest(|complexity| async move {
                let schema = Schema::build(Query, async_graphql::EmptyMutation, EmptySubscription)
                    .limit_complexity(complexity)
                    .finish();
                let response = schema.execute(text).await;
                !response
                    .errors
                    .iter()
                    .any(|e| e.message == "Query is too complex.")
            })
            .await;
            assert_eq!(ours, theirs, "complexity of {text}");
        }
    }
}
