package org.autoglm.engine;

/**
 * Text to token ids, with special-token strings ("<|user|>") mapped to their ids and no special
 * tokens added. The app implements it with a kept Hugging Face tokenizers library reading the
 * bundle's tokenizer.json (DjlTokenizer); decoding goes through {@link Vocabulary}.
 */
public interface Tokenizer {
  long[] encode(String text);
}
