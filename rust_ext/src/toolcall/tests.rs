//! The parser's laws on examples of each format, and on random streams
//! built from markup fragments: every chunking gives the same events.

use super::{Event, Options, Parser, ToolCallError};

/// Events with adjacent text, reasoning and same-call args merged.
fn merged(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(Event::Text(a)), Event::Text(b)) => a.push_str(&b),
            (Some(Event::Reasoning(a)), Event::Reasoning(b)) => a.push_str(&b),
            (Some(Event::Args { index: i, delta: a }), Event::Args { index: j, delta: b })
                if *i == j =>
            {
                a.push_str(&b)
            }
            (_, e) => out.push(e),
        }
    }
    out
}

fn feed_all(chunks: &[&str], opts: Options) -> Result<Vec<Event>, ToolCallError> {
    let mut p = Parser::new(opts);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.feed(c)?);
    }
    events.extend(p.finish()?);
    Ok(merged(events))
}

fn parse(text: &str) -> Vec<Event> {
    feed_all(&[text], Options::default()).expect("within caps")
}

/// Splits at every char boundary, in two and char by char: all the same.
fn assert_chunking_invariant(text: &str) -> Vec<Event> {
    let whole = parse(text);
    for (at, _) in text.char_indices().skip(1) {
        let split = feed_all(&[&text[..at], &text[at..]], Options::default()).expect("within caps");
        assert_eq!(split, whole, "split at {at} of {text:?}");
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(
        feed_all(&refs, Options::default()).expect("within caps"),
        whole,
        "char by char: {text:?}"
    );
    whole
}

fn text(s: &str) -> Event {
    Event::Text(s.to_owned())
}

fn start(index: usize, name: &str) -> Event {
    Event::Start {
        index,
        id: format!("call_{index}"),
        name: name.to_owned(),
    }
}

fn args(index: usize, delta: &str) -> Event {
    Event::Args {
        index,
        delta: delta.to_owned(),
    }
}

fn end(index: usize, reason: Option<&'static str>) -> Event {
    Event::End { index, reason }
}

#[test]
fn plain_text_passes_through() {
    assert_eq!(
        assert_chunking_invariant("Hello, <b>world</b> 1 < 2 é😀"),
        vec![text("Hello, <b>world</b> 1 < 2 é😀")]
    );
}

#[test]
fn hermes_call_with_text_around() {
    let s = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nDone.";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            text("Let me check.\n"),
            start(0, "get_weather"),
            args(0, "{\"city\": \"Paris\"}"),
            end(0, None),
            text("\nDone."),
        ]
    );
}

#[test]
fn hermes_name_after_arguments_and_arguments_as_a_string() {
    let s = r#"<tool_call>{"arguments": {"a": [1, 2]}, "name": "f"}</tool_call><tool_call>{"name": "g", "parameters": "{\"q\": \"\\u00e9\"}"}</tool_call>"#;
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, r#"{"a": [1, 2]}"#),
            end(0, None),
            start(1, "g"),
            args(1, "{\"q\": \"\\u00e9\"}"),
            end(1, None),
        ]
    );
}

#[test]
fn hermes_missing_closers_are_recovered() {
    let s = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>after";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, "{\"a\": 1}"),
            end(0, Some("unclosed JSON")),
            text("after")
        ]
    );
    let s = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"cut";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, "{\"a\": \"cut\"}"),
            end(0, Some("stream ended"))
        ]
    );
    let s = "<tool_call>{\"name\": \"f\"}\n<tool_call>{\"name\": \"g\"}";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, "{}"),
            end(0, Some("missing </tool_call>")),
            start(1, "g"),
            args(1, "{}"),
            end(1, Some("missing </tool_call>")),
        ]
    );
}

#[test]
fn whitespace_between_calls_is_not_text_but_after_the_last_it_is() {
    let s = "A <tool_call>{\"name\": \"f\"}</tool_call>\n\n<function=g>\n</function>\n  ";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            text("A "),
            start(0, "f"),
            args(0, "{}"),
            end(0, None),
            start(1, "g"),
            args(1, "{}"),
            end(1, None),
            text("\n  "),
        ]
    );
    let s = "<tool_call>{\"name\": \"f\"}\n";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, "{}"),
            end(0, Some("missing </tool_call>")),
            text("\n")
        ]
    );
}

#[test]
fn xml_tool_call_closer_in_a_value_closes_only_before_a_call_or_the_end() {
    let s = "<tool_call>\n<function=w>\n<parameter=c>\nends with </tool_call> here.\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "w"),
            args(0, r#"{"c": "ends with </tool_call> here."}"#),
            end(0, None)
        ]
    );
    let s = "<function=w>\n<parameter=c>\nv\n</tool_call>\n<function=x>\n</function>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "w"),
            args(0, r#"{"c": "v"}"#),
            end(0, Some("missing </parameter>")),
            start(1, "x"),
            args(1, "{}"),
            end(1, None)
        ]
    );
    let s = "<function=w>\n<parameter=c>\nv\n</tool_call>\n";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "w"),
            args(0, r#"{"c": "v"}"#),
            end(0, Some("missing </parameter>")),
            text("\n")
        ]
    );
}

#[test]
fn xml_next_parameter_closes_a_value_missing_its_closer() {
    let s = "<function=f>\n<parameter=a>1\n<parameter=b>\n2\n</parameter>\n</function>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, r#"{"a": "1", "b": "2"}"#),
            end(0, Some("missing </parameter>"))
        ]
    );
}

#[test]
fn xml_call_streams_values_as_json_strings() {
    let s = "<tool_call>\n<function=run>\n<parameter=code>\nprint(\"hi\")\nx = 1\n</parameter>\n<parameter=n>\n3\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "run"),
            args(0, r#"{"code": "print(\"hi\")\nx = 1", "n": "3"}"#),
            end(0, None)
        ]
    );
}

#[test]
fn xml_values_may_contain_closers() {
    let s = "<function=write>\n<parameter=text>\na</parameter> b\n</function> c\n</parameter>\n</function>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "write"),
            args(0, r#"{"text": "a</parameter> b\n</function> c"}"#),
            end(0, None)
        ]
    );
}

#[test]
fn xml_missing_closers_are_recovered() {
    let s = "<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>\nok";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, r#"{"a": "1"}"#),
            end(0, Some("missing </parameter>")),
            text("\nok")
        ]
    );
    let s = "<tool_call>\n<function=f>\n<parameter=a>\nv\n<tool_call>\n<function=g>\n</function>\n</tool_call>";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, r#"{"a": "v"}"#),
            end(0, Some("next <tool_call> began")),
            start(1, "g"),
            args(1, "{}"),
            end(1, None),
        ]
    );
    let s = "<tool_call>\n<function=f>\n<parameter=a>\nv";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, r#"{"a": "v"}"#),
            end(0, Some("stream ended"))
        ]
    );
}

#[test]
fn prose_mentioning_the_tags_stays_text() {
    for s in [
        "Use the <tool_call> tag, or <function=\nfoo>, or <function=<b>.",
        "<tool_call> then text",
        "x <tool_c",
        "<function=>",
        "<tool_call><think>r</think>",
    ] {
        let events = assert_chunking_invariant(s);
        let shown: String = events
            .iter()
            .map(|e| match e {
                Event::Text(t) | Event::Reasoning(t) => t.as_str(),
                _ => "",
            })
            .collect();
        let without_think = s.replace("<think>", "").replace("</think>", "");
        assert_eq!(shown, without_think, "{s:?}: {events:?}");
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::Text(_) | Event::Reasoning(_))),
            "{events:?}"
        );
    }
}

#[test]
fn calls_inside_think_are_reasoning() {
    let s = "<think>maybe <tool_call>{\"name\": \"f\"}</tool_call></think>Answer";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            Event::Reasoning("maybe <tool_call>{\"name\": \"f\"}</tool_call>".into()),
            text("Answer")
        ]
    );
    assert_eq!(
        assert_chunking_invariant("<think>cut </thi"),
        vec![Event::Reasoning("cut </thi".into())]
    );
}

#[test]
fn only_a_possible_marker_start_is_held_back() {
    let mut p = Parser::new(Options::default());
    assert_eq!(p.feed("abc <tool_c").ok(), Some(vec![text("abc ")]));
    assert_eq!(p.feed("x").ok(), Some(vec![text("<tool_cx")]));
    assert_eq!(p.feed("a<b").ok(), Some(vec![text("a<b")]));
    assert_eq!(p.feed("<").ok(), Some(vec![]));
    assert_eq!(p.finish().ok(), Some(vec![text("<")]));
    assert_eq!(p.feed("x"), Err(ToolCallError::Finished));
    assert_eq!(p.finish(), Err(ToolCallError::Finished));
}

#[test]
fn caps_are_errors_and_finish_the_parser() {
    let small = Options {
        max_buffer: 8,
        ..Options::default()
    };
    let s = r#"<tool_call>{"arguments": {"long": "0123456789"}, "name": "f"}"#;
    assert!(matches!(
        feed_all(&[s], small.clone()),
        Err(ToolCallError::BufferFull { max: 8, .. })
    ));
    assert!(matches!(
        feed_all(&["<tool_call>", &" ".repeat(9)], small),
        Err(ToolCallError::BufferFull { .. })
    ));
    let shallow = Options {
        max_depth: 2,
        ..Options::default()
    };
    let s = r#"<tool_call>{"name": "f", "arguments": {"a": [[1]]}}"#;
    assert_eq!(
        feed_all(&[s], shallow),
        Err(ToolCallError::TooDeep { max: 2 })
    );
    let few = Options {
        max_calls: 1,
        ..Options::default()
    };
    let s = "<function=a></function><function=b></function>";
    assert_eq!(
        feed_all(&[s], few),
        Err(ToolCallError::TooManyCalls { max: 1 })
    );
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "<function=f>",
    "</function>",
    "<parameter=k>",
    "</parameter>",
    "<think>",
    "</think>",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ":",
    ",",
    " ",
    "\n",
    "\"name\"",
    "\"arguments\"",
    "\"f\"",
    "1",
    "-",
    "true",
    "x",
    "é",
    "<",
    ">",
    "<tool_c",
    "</para",
    "\\u00e9",
    "\\ud83d",
];

#[test]
fn random_markup_streams_are_chunking_invariant() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..400 {
        let n = rng.below(30);
        let s: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let whole = parse(&s);
        // random splits at char boundaries
        let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(1).collect();
        for _ in 0..5 {
            let mut cuts: Vec<usize> = bounds
                .iter()
                .copied()
                .filter(|_| rng.below(3) == 0)
                .collect();
            cuts.push(s.len());
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&s[at..c]);
                at = c;
            }
            assert_eq!(
                feed_all(&chunks, Options::default()).expect("within caps"),
                whole,
                "{s:?} as {chunks:?}"
            );
        }
        for e in &whole {
            if let Event::Text(t) = e {
                assert!(
                    !t.contains("<tool_call>{") && !t.contains("<function=f>"),
                    "{s:?}: {whole:?}"
                );
            }
        }
    }
}

#[test]
fn an_opener_cut_short_after_a_call_is_text_a_closer_is_not() {
    let s = "<function=a>\n</function><tool_c";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![start(0, "a"), args(0, "{}"), end(0, None), text("<tool_c")]
    );
    let s = "<tool_call>{\"name\": \"f\"}\n<func";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "f"),
            args(0, "{}"),
            end(0, Some("missing </tool_call>")),
            text("\n<func")
        ]
    );
    let s = "<tool_call>\n<function=a>\n</function>\n</tool_c";
    assert_eq!(
        assert_chunking_invariant(s),
        vec![
            start(0, "a"),
            args(0, "{}"),
            end(0, Some("missing </tool_call>")),
            text("\n")
        ]
    );
}
