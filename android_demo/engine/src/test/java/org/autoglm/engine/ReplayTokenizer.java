package org.autoglm.engine;

import static org.junit.Assert.assertEquals;

/**
 * Tokenization is the app's library (DJL's Hugging Face tokenizers), not available off-device: the
 * replay hands back the tokenizer's ids the trace recorded, after checking the engine asked for
 * exactly the trace's prompt text.
 */
final class ReplayTokenizer implements Tokenizer {
  private final String text;
  private final long[] ids;

  ReplayTokenizer(String text, long[] ids) {
    this.text = text;
    this.ids = ids;
  }

  @Override
  public long[] encode(String prompt) {
    assertEquals("rendered chat prompt", text, prompt);
    return ids.clone();
  }
}
