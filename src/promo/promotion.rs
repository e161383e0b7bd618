//! Promotions and the promotions file.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use super::timestamp::EpochMs;

/// A promotion: which fences it targets, when it is valid, and how often a user may be told again.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub id: Arc<str>,
    pub name: String,
    pub fence_ids: Vec<Arc<str>>,
    /// Inclusive start; `None` means always started.
    pub valid_from: Option<EpochMs>,
    /// Exclusive end; `None` means never ends.
    pub valid_until: Option<EpochMs>,
    pub active: bool,
    /// Minimum time between two `enter` events of one user for this promotion.
    pub cooldown_ms: i64,
}

impl Promotion {
    #[must_use]
    pub fn is_valid_at(&self, at: EpochMs) -> bool {
        self.active
            && self.valid_from.is_none_or(|from| at >= from)
            && self.valid_until.is_none_or(|until| at < until)
    }
}

/// A promotion as written in the promotions file or an API body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionSpec {
    #[schema(min_length = 1, max_length = 128)]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[schema(min_items = 1)]
    pub fences: Vec<String>,
    /// RFC 3339; absent: valid from the start.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub valid_from: Option<String>,
    /// RFC 3339; absent: no end.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub valid_until: Option<String>,
    #[serde(default = "default_active")]
    pub active: bool,
    /// Least time between two enters of one user (counted from the last enter).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31536000)]
    pub cooldown_s: Option<f64>,
}

fn default_active() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionsFile {
    promotions: Vec<PromotionSpec>,
}

/// What is wrong with one promotion; `index` is its position in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("promotion {index} (id {id:?}): {problem}")]
pub struct PromotionProblem {
    pub index: usize,
    pub id: String,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("promotions file is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{} invalid promotion(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<PromotionProblem>),
}

impl PromotionSpec {
    /// Checks one spec; `index` only labels the problems.
    pub fn parse(&self, index: usize) -> Result<Promotion, Vec<PromotionProblem>> {
        let mut problems = Vec::new();
        let mut problem = |text: String| {
            problems.push(PromotionProblem {
                index,
                id: self.id.clone(),
                problem: text,
            });
        };
        if self.id.trim().is_empty() || self.id.len() > 128 {
            problem("id must be 1 to 128 characters".into());
        }
        for (field, value) in std::iter::once(("id", &self.id))
            .chain(self.name.iter().map(|n| ("name", n)))
            .chain(self.fences.iter().map(|f| ("fences", f)))
        {
            if let Err(error) = crate::text::check_printable(field, value) {
                problem(error.to_string());
            }
        }
        if self.fences.is_empty() {
            problem("fences is empty; a promotion targets at least one fence".into());
        }
        let mut time = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(EpochMs::parse_rfc3339)
                .transpose()
                .unwrap_or_else(|err| {
                    problem(format!("{field}: {err}"));
                    None
                })
        };
        let valid_from = time("valid_from", &self.valid_from);
        let valid_until = time("valid_until", &self.valid_until);
        let mut problems_after = Vec::new();
        if let (Some(from), Some(until)) = (valid_from, valid_until) {
            if from >= until {
                problems_after.push("valid_from must be before valid_until".to_string());
            }
        }
        let cooldown_ms = match self.cooldown_s {
            None => 0,
            Some(s) if s.is_finite() && (0.0..=365.0 * 86_400.0).contains(&s) => {
                (s * 1000.0) as i64
            }
            Some(s) => {
                problems_after.push(format!("cooldown_s {s} must be between 0 and one year"));
                0
            }
        };
        for text in problems_after {
            problems.push(PromotionProblem {
                index,
                id: self.id.clone(),
                problem: text,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Promotion {
            id: Arc::from(self.id.as_str()),
            name: self.name.clone().unwrap_or_else(|| self.id.clone()),
            fence_ids: self.fences.iter().map(|f| Arc::from(f.as_str())).collect(),
            valid_from,
            valid_until,
            active: self.active,
            cooldown_ms,
        })
    }
}

/// Parses a promotions file: `{"promotions": [...]}`. Reports every problem of every promotion.
pub fn parse_promotions(bytes: &[u8]) -> Result<Vec<Promotion>, PromotionError> {
    let file: PromotionsFile = serde_json::from_slice(bytes)?;
    let mut promotions = Vec::with_capacity(file.promotions.len());
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, spec) in file.promotions.iter().enumerate() {
        if !seen.insert(spec.id.as_str()) {
            problems.push(PromotionProblem {
                index,
                id: spec.id.clone(),
                problem: "duplicate id".into(),
            });
        }
        match spec.parse(index) {
            Ok(promotion) => promotions.push(promotion),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if problems.is_empty() {
        Ok(promotions)
    } else {
        Err(PromotionError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let err = parse_promotions(
            br#"{"promotions":[
                {"id":"a","fences":["x"],"valid_from":"2027-01-01T00:00:00Z","valid_until":"2026-01-01T00:00:00Z"},
                {"id":"a","fences":[],"cooldown_s":-5},
                {"id":"c","fences":["x"],"valid_until":"soon"}]}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("promotion 0 (id \"a\"): valid_from must be before valid_until"),
            "{text}"
        );
        assert!(
            text.contains("promotion 1 (id \"a\"): duplicate id"),
            "{text}"
        );
        assert!(
            text.contains("promotion 1 (id \"a\"): fences is empty"),
            "{text}"
        );
        assert!(
            text.contains("cooldown_s -5 must be between 0 and one year"),
            "{text}"
        );
        assert!(
            text.contains("promotion 2 (id \"c\"): valid_until: ts \"soon\""),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_name_the_spot() {
        let err = parse_promotions(br#"{"promotions":[{"id":"a","fences":["x"],"colour":"red"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    #[test]
    fn validity_window_is_half_open_and_inactive_never_valid() {
        let promotion = parse_promotions(
            br#"{"promotions":[{"id":"a","fences":["x"],"valid_from":"2026-01-01T00:00:00Z","valid_until":"2026-02-01T00:00:00Z"}]}"#,
        )
        .unwrap()
        .remove(0);
        let from = promotion.valid_from.unwrap();
        let until = promotion.valid_until.unwrap();
        assert!(!promotion.is_valid_at(from.plus_ms(-1)));
        assert!(promotion.is_valid_at(from));
        assert!(!promotion.is_valid_at(until));
        let inactive = Promotion {
            active: false,
            ..promotion
        };
        assert!(!inactive.is_valid_at(from));
    }
}
