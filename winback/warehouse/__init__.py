"""The warehouse: connections, every table winback owns (`tables`), every dbt relation
Python reads (`relations`), the raw schema, binary COPY helpers."""
