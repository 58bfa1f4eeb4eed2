package org.autoglm.engine;

import static org.junit.Assert.assertEquals;

import org.junit.Test;

public class StreamDecoderTest {
  // "你" is E4 BD A0: byte-level BPE spells it "ä½" + "ł" (0xA0 is not printable -> U+0142).
  private static final String TOKENIZER =
      "{\"model\": {\"vocab\": {\"ä½\": 0, \"ł\": 1, \"a\": 2}},"
          + " \"added_tokens\": [{\"id\": 3, \"content\": \"<|user|>\", \"special\": true},"
          + " {\"id\": 4, \"content\": \"<think>\", \"special\": false}],"
          + " \"decoder\": {\"type\": \"ByteLevel\"}}";

  @Test
  public void holdsBackHalfACharacter() {
    StreamDecoder d = new StreamDecoder(Vocabulary.parse(TOKENIZER, "test"), true);
    assertEquals("", d.push(0));
    assertEquals("你", d.push(1));
    assertEquals("a", d.push(2));
    assertEquals("", d.finish());
  }

  @Test
  public void skipsSpecialButKeepsAddedTokens() {
    StreamDecoder d = new StreamDecoder(Vocabulary.parse(TOKENIZER, "test"), true);
    assertEquals("", d.push(3));
    assertEquals("<think>", d.push(4));
  }

  @Test
  public void flushesADanglingByteAsReplacement() {
    StreamDecoder d = new StreamDecoder(Vocabulary.parse(TOKENIZER, "test"), true);
    assertEquals("", d.push(0));
    assertEquals("\uFFFD", d.finish());
  }

  @Test(expected = EngineException.class)
  public void refusesNonByteLevelTokenizers() {
    Vocabulary.parse("{\"model\": {\"vocab\": {}}, \"decoder\": {\"type\": \"WordPiece\"}}", "t.json");
  }
}
