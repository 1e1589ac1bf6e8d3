//! `Einsum` equations (numpy's notation): parsing, and binding a parsed equation to the ranks
//! of its operands. Shape inference (here) and the CPU kernel (fpx-runtime) share it, so both
//! read an equation the same way.
//!
//! An equation is `term,term,...` optionally followed by `->term`; a term is letters
//! (`a`-`z`, `A`-`Z`) with at most one `...` standing for the axes the letters leave over
//! (broadcast across operands, right-aligned). Whitespace is ignored. Without `->` the output
//! is implicit: the ellipsis (if any operand has one), then the letters that occur exactly once,
//! in alphabetical (ASCII) order.

/// One label of a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// A letter, as its ASCII byte.
    Letter(u8),
    /// `...`: the axes the letters of a term leave over.
    Ellipsis,
}

/// A parsed equation: the terms of the inputs and of the output (implicit output made explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equation {
    /// One term per input operand.
    pub inputs: Vec<Vec<Label>>,
    /// The output term.
    pub output: Vec<Label>,
}

/// An equation bound to the ranks of its operands: every axis of every operand, and of the
/// output, as a label id — letters `0..52`, the ellipsis' axes `52..52 + E` (right-aligned, `E`
/// the most axes any operand's ellipsis covers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The label of each axis of each input.
    pub inputs: Vec<Vec<usize>>,
    /// The label of each axis of the output (distinct).
    pub output: Vec<usize>,
    /// The number of label ids in use: every id is below it.
    pub labels: usize,
}

/// Label ids of letters: `a`-`z` are 0..26, `A`-`Z` 26..52.
const LETTERS: usize = 52;

fn letter_id(c: u8) -> usize {
    if c.is_ascii_lowercase() {
        (c - b'a') as usize
    } else {
        26 + (c - b'A') as usize
    }
}

/// Parses one term.
fn parse_term(term: &str, what: &str) -> Result<Vec<Label>, String> {
    let bytes = term.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut k = 0;
    while k < bytes.len() {
        match bytes[k] {
            c if c.is_ascii_alphabetic() => {
                out.push(Label::Letter(c));
                k += 1;
            }
            b'.' if bytes[k..].starts_with(b"...") => {
                if out.contains(&Label::Ellipsis) {
                    return Err(format!("{what} '{term}' has more than one ellipsis"));
                }
                out.push(Label::Ellipsis);
                k += 3;
            }
            _ => return Err(format!("{what} '{term}' holds a character that is not a letter or '...'")),
        }
    }
    Ok(out)
}

impl Equation {
    /// Parses an equation; an error says what is malformed.
    pub fn parse(equation: &str) -> Result<Equation, String> {
        let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq.as_str(), None),
        };
        let inputs = lhs.split(',').map(|t| parse_term(t, "input term")).collect::<Result<Vec<_>, _>>()?;
        let output = match rhs {
            Some(r) => {
                let out = parse_term(r, "output term")?;
                for (k, l) in out.iter().enumerate() {
                    if out[..k].contains(l) {
                        return Err(format!("output term '{r}' repeats a label"));
                    }
                    if let Label::Letter(c) = l {
                        if !inputs.iter().flatten().any(|x| x == l) {
                            return Err(format!("output label '{}' is in no input term", *c as char));
                        }
                    }
                }
                out
            }
            None => {
                let mut counts = [0usize; LETTERS];
                for l in inputs.iter().flatten() {
                    if let Label::Letter(c) = l {
                        counts[letter_id(*c)] += 1;
                    }
                }
                let mut once: Vec<u8> =
                    inputs.iter().flatten().filter_map(|l| if let Label::Letter(c) = l { Some(*c) } else { None }).collect();
                once.retain(|&c| counts[letter_id(c)] == 1);
                once.sort_unstable();
                let ellipsis = inputs.iter().flatten().any(|l| *l == Label::Ellipsis);
                ellipsis.then_some(Label::Ellipsis).into_iter().chain(once.into_iter().map(Label::Letter)).collect()
            }
        };
        Ok(Equation { inputs, output })
    }

    /// Binds the equation to operands of the given ranks: the operand count must match, each
    /// operand must have as many axes as its letters (at least as many with an ellipsis), and
    /// an output without an ellipsis is refused when the ellipsis covers axes (as numpy does).
    pub fn bind(&self, ranks: &[usize]) -> Result<Bound, String> {
        if ranks.len() != self.inputs.len() {
            return Err(format!("the equation has {} input terms but there are {} inputs", self.inputs.len(), ranks.len()));
        }
        let mut extra = Vec::with_capacity(ranks.len());
        for (k, (term, &rank)) in self.inputs.iter().zip(ranks).enumerate() {
            let letters = term.iter().filter(|l| **l != Label::Ellipsis).count();
            let has_ellipsis = term.len() != letters;
            if rank < letters || (!has_ellipsis && rank != letters) {
                return Err(format!("input {k} has rank {rank} but its term has {letters} letters"));
            }
            extra.push(rank - letters);
        }
        let e = extra.iter().copied().max().unwrap_or(0);
        let ids = |term: &[Label], own: usize| -> Vec<usize> {
            let mut v = Vec::with_capacity(term.len() + own);
            for l in term {
                match l {
                    Label::Letter(c) => v.push(letter_id(*c)),
                    Label::Ellipsis => v.extend(LETTERS + e - own..LETTERS + e),
                }
            }
            v
        };
        let inputs = self.inputs.iter().zip(&extra).map(|(t, &own)| ids(t, own)).collect();
        if e > 0 && !self.output.contains(&Label::Ellipsis) {
            return Err("the ellipsis covers axes but the output term has no ellipsis".into());
        }
        Ok(Bound { inputs, output: ids(&self.output, e), labels: LETTERS + e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(eq: &str, ranks: &[usize]) -> Result<Bound, String> {
        Equation::parse(eq)?.bind(ranks)
    }

    #[test]
    fn explicit_and_implicit_outputs() {
        let b = bound("bhid, bhjd -> bhij", &[4, 4]).unwrap();
        let (bb, h, i, j, d) = (1, 7, 8, 9, 3);
        assert_eq!(b.inputs, vec![vec![bb, h, i, d], vec![bb, h, j, d]]);
        assert_eq!(b.output, vec![bb, h, i, j]);
        // Implicit: letters occurring once, sorted (uppercase first, as ASCII).
        assert_eq!(bound("Ba,aC", &[2, 2]).unwrap().output, vec![26 + 1, 26 + 2]);
        assert_eq!(bound("i,i", &[1, 1]).unwrap().output, Vec::<usize>::new());
        assert_eq!(bound("ij", &[2]).unwrap().output, vec![8, 9]);
    }

    #[test]
    fn ellipsis_axes_are_right_aligned() {
        let b = bound("...ii->...i", &[4]).unwrap();
        assert_eq!(b.inputs, vec![vec![52, 53, 8, 8]]);
        assert_eq!(b.output, vec![52, 53, 8]);
        let b = bound("i...,j...", &[3, 2]).unwrap();
        assert_eq!(b.inputs, vec![vec![8, 52, 53], vec![9, 53]]);
        assert_eq!(b.output, vec![52, 53, 8, 9]);
        assert_eq!(b.labels, 54);
        assert!(bound("...i->i", &[2]).is_err());
        assert!(bound("...i->i", &[1]).is_ok());
    }

    #[test]
    fn malformed_equations_are_errors() {
        for eq in ["ij->ii", "ij->k", "i..j", "i......", "i1", "ij->i->j"] {
            assert!(Equation::parse(eq).is_err(), "{eq}");
        }
        assert!(bound("ij,jk", &[2]).is_err());
        assert!(bound("ij", &[3]).is_err());
        assert!(bound("ij...", &[1]).is_err());
    }
}
