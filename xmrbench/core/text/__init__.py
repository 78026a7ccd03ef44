"""Text processing: tokenizer, vocabulary, orderless text features."""
