//! Topic trie (stub: being written).
pub struct TopicTrie<V> { _v: Vec<V> }
impl<V> Default for TopicTrie<V> { fn default() -> Self { TopicTrie { _v: Vec::new() } } }
impl<V> TopicTrie<V> {
    pub fn new() -> Self { Self::default() }
    pub fn insert(&mut self, filter: &str, value: V) -> Option<V> { let _ = (filter, value); todo!() }
    pub fn get(&self, filter: &str) -> Option<&V> { let _ = filter; todo!() }
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> { let _ = filter; todo!() }
    pub fn remove(&mut self, filter: &str) -> Option<V> { let _ = filter; todo!() }
    pub fn len(&self) -> usize { todo!() }
    pub fn is_empty(&self) -> bool { self.len() == 0 }
    pub fn match_each<F: FnMut(&str, &V)>(&self, topic: &str, f: F) { let _ = (topic, f); todo!() }
}
