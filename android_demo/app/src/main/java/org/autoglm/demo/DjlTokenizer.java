package org.autoglm.demo;

import ai.djl.huggingface.tokenizers.Encoding;
import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import java.io.File;
import java.io.IOException;
import org.autoglm.engine.EngineException;
import org.autoglm.engine.Tokenizer;

/**
 * The bundle's tokenizer.json through DJL's binding of Hugging Face tokenizers (the same Rust
 * library the Python runtime uses), with no special tokens added: the chat template writes them.
 */
public final class DjlTokenizer implements Tokenizer {
  private final HuggingFaceTokenizer tokenizer;

  public DjlTokenizer(File tokenizerJson) {
    try {
      tokenizer =
          HuggingFaceTokenizer.builder()
              .optTokenizerPath(tokenizerJson.toPath())
              .optAddSpecialTokens(false)
              // A system prompt is kilobytes of text: never cut or pad it.
              .optTruncation(false)
              .optPadding(false)
              .build();
    } catch (IOException | RuntimeException e) {
      throw new EngineException(tokenizerJson + ": cannot load: " + e.getMessage(), e);
    }
  }

  @Override
  public long[] encode(String text) {
    Encoding enc = tokenizer.encode(text);
    return enc.getIds();
  }
}
