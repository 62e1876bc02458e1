//! A small CSV reader for `trackctl publish --csv` (RFC 4180: comma-separated, `"`-quoted fields with `""` for
//! a quote, commas and line breaks allowed inside quotes, `\n` or `\r\n` line ends, an optional UTF-8 BOM).
//! Each record carries the line it starts on, so errors can point at it; a malformed record is reported on
//! its own and the reader goes on with the next line.

/// One record: the line it starts on (1-based) and its fields, or why it cannot be read.
pub type Record = (usize, Result<Vec<String>, String>);

/// Every non-blank record of `text`, in order.
pub fn records(text: &str) -> Vec<Record> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut error: Option<String> = None;
        let mut quoted_field = false;
        loop {
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some(',') => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                Some('"') if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    // Inside quotes until a lone closing quote.
                    loop {
                        match chars.next() {
                            None => {
                                error.get_or_insert_with(|| {
                                    "a quoted field is not closed before the end of the input"
                                        .into()
                                });
                                break;
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                        }
                    }
                    // After the closing quote: a comma, a line end or the end.
                    match chars.peek() {
                        None | Some(',') | Some('\n') | Some('\r') => {}
                        Some(_) => {
                            error.get_or_insert_with(|| {
                                "a quoted field must end at a comma or the end of the line".into()
                            });
                        }
                    }
                }
                Some(c) => {
                    if quoted_field {
                        // Text after a closing quote: already reported; skip to the line's end.
                        continue;
                    }
                    field.push(c);
                }
            }
        }
        let blank = fields.len() == 1 && fields[0].trim().is_empty() && error.is_none();
        if !blank {
            out.push((start, error.map_or(Ok(fields), Err)));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(usize, Vec<String>)> {
        records(text)
            .into_iter()
            .map(|(n, r)| (n, r.unwrap()))
            .collect()
    }

    #[test]
    fn plain_and_quoted_fields_with_their_lines() {
        let got =
            ok("\u{feff}a,b,c\r\n\n1,\"Souza, Ana\",\"say \"\"hi\"\"\"\n2,\"two\nlines\",\n3,,x");
        assert_eq!(
            got,
            vec![
                (1, vec!["a".into(), "b".into(), "c".into()]),
                (
                    3,
                    vec!["1".into(), "Souza, Ana".into(), "say \"hi\"".into()]
                ),
                (4, vec!["2".into(), "two\nlines".into(), String::new()]),
                (6, vec!["3".into(), String::new(), "x".into()]),
            ]
        );
    }

    #[test]
    fn a_malformed_record_is_reported_and_the_next_line_still_read() {
        let got = records("a,\"b\"c,d\ne,f\n\"open");
        assert_eq!(got.len(), 3);
        assert!(
            got[0]
                .1
                .as_ref()
                .unwrap_err()
                .contains("must end at a comma")
        );
        assert_eq!(got[1], (2, Ok(vec!["e".into(), "f".into()])));
        assert_eq!(got[2].0, 3);
        assert!(got[2].1.as_ref().unwrap_err().contains("not closed"));
    }
}
