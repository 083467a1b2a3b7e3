"""The warehouse: connections and the schemas winback owns."""
