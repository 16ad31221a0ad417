//! Text buffering like LMNT's: text is held until a sentence ends (`.`, `!` or `?` followed
//! by whitespace or the end of the buffer) or until a flush or finish. Pure.

/// Most text one utterance may buffer: LMNT's REST limit of 5000 characters per request,
/// applied in bytes so a flood cannot grow memory without bound.
pub const MAX_BUFFERED_TEXT_BYTES: usize = 5_000;

/// Text appended and not yet spoken.
#[derive(Debug, Default, Clone)]
pub struct TextBuffer {
    buf: String,
}

/// Appending would exceed [`MAX_BUFFERED_TEXT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl TextBuffer {
    /// Appends text; errs (buffer unchanged) when the buffer would exceed the limit.
    pub fn push(&mut self, text: &str) -> Result<(), TooLong> {
        if self.buf.len() + text.len() > MAX_BUFFERED_TEXT_BYTES {
            return Err(TooLong);
        }
        self.buf.push_str(text);
        Ok(())
    }

    /// Takes the text up to and including the last complete sentence (with the whitespace
    /// character after it); None when no sentence is complete yet.
    pub fn take_sentences(&mut self) -> Option<String> {
        let mut cut = None;
        let mut chars = self.buf.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if matches!(c, '.' | '!' | '?') {
                match chars.peek() {
                    None => cut = Some(i + c.len_utf8()),
                    Some(&(j, n)) if n.is_whitespace() => cut = Some(j + n.len_utf8()),
                    Some(_) => {}
                }
            }
        }
        let cut = cut?;
        let rest = self.buf.split_off(cut);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    /// Takes everything buffered (for flush and finish); None when empty.
    pub fn take_all(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }

    /// Drops everything buffered (reset).
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_text_until_a_sentence_ends() {
        let mut b = TextBuffer::default();
        b.push("Hello there, ").unwrap();
        assert_eq!(b.take_sentences(), None);
        b.push("Mr.Smith. And").unwrap();
        assert_eq!(
            b.take_sentences().as_deref(),
            Some("Hello there, Mr.Smith. ")
        );
        b.push(" more!").unwrap();
        assert_eq!(b.take_sentences().as_deref(), Some("And more!"));
        assert_eq!(b.take_all(), None);
        b.push("tail é").unwrap();
        assert_eq!(b.take_all().as_deref(), Some("tail é"));
    }

    #[test]
    fn limit_and_clear() {
        let mut b = TextBuffer::default();
        b.push(&"a".repeat(MAX_BUFFERED_TEXT_BYTES)).unwrap();
        assert_eq!(b.push("b"), Err(TooLong));
        b.clear();
        assert_eq!(b.take_all(), None);
    }
}
