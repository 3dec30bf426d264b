"""The per-frame pass: quality gate, rectification, embedding, retrieval, registration, temporal filter."""
