//! Topic names and filters (stub: being written).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError { Empty, TooLong, TooManyLevels, InvalidWildcard, NullChar, InvalidShare }

pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> { let _ = (topic, max_levels); todo!() }
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> { let _ = (filter, max_levels); todo!() }
pub fn is_wildcard(filter: &str) -> bool { let _ = filter; todo!() }
pub fn matches(filter: &str, topic: &str) -> bool { let _ = (filter, topic); todo!() }
/// `$share/<group>/<filter>` or `$queue/<filter>` -> (group, filter).
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> { let _ = filter; todo!() }
