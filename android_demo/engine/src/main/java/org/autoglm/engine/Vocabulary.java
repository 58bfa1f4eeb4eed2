package org.autoglm.engine;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/**
 * Token id to raw bytes, read from tokenizer.json, for streaming decode (runtime tokenizer.py's
 * token_bytes): a byte-level BPE token's characters map back to bytes through GPT-2's
 * bytes_to_unicode table; added tokens stand for their own text.
 */
public final class Vocabulary {
  private final Map<Integer, String> pieces = new HashMap<>();
  private final Map<Integer, String> added = new HashMap<>();
  private final Set<Integer> special = new HashSet<>();
  private final Map<Character, Integer> byteOf = byteLevelDecodeTable();

  private Vocabulary(JsonObject tok, String where) {
    JsonElement decoder = tok.get("decoder");
    if (decoder == null
        || !decoder.isJsonObject()
        || !"ByteLevel".equals(decoder.getAsJsonObject().get("type").getAsString())) {
      throw new EngineException(where + ": not a byte-level tokenizer; streaming needs ByteLevel");
    }
    JsonObject vocab = tok.getAsJsonObject("model").getAsJsonObject("vocab");
    for (Map.Entry<String, JsonElement> e : vocab.entrySet()) {
      pieces.put(e.getValue().getAsInt(), e.getKey());
    }
    if (tok.has("added_tokens")) {
      for (JsonElement e : tok.getAsJsonArray("added_tokens")) {
        JsonObject a = e.getAsJsonObject();
        int id = a.get("id").getAsInt();
        added.put(id, a.get("content").getAsString());
        if (a.get("special").getAsBoolean()) {
          special.add(id);
        }
      }
    }
  }

  public static Vocabulary read(File tokenizerJson) {
    String text;
    try {
      text = new String(Files.readAllBytes(tokenizerJson.toPath()), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new EngineException(tokenizerJson + ": cannot read: " + e.getMessage(), e);
    }
    return parse(text, tokenizerJson.getPath());
  }

  /** From tokenizer.json text; `where` names it in errors. */
  public static Vocabulary parse(String json, String where) {
    try {
      return new Vocabulary(JsonParser.parseString(json).getAsJsonObject(), where);
    } catch (RuntimeException e) {
      if (e instanceof EngineException) {
        throw e;
      }
      throw new EngineException(where + ": not a tokenizer.json: " + e.getMessage(), e);
    }
  }

  public boolean isSpecial(int id) {
    return special.contains(id);
  }

  /** The UTF-8 bytes token id stands for. */
  public byte[] tokenBytes(int id) {
    String a = added.get(id);
    if (a != null) {
      return a.getBytes(StandardCharsets.UTF_8);
    }
    String piece = pieces.get(id);
    if (piece == null) {
      throw new EngineException("token id " + id + " is outside the tokenizer's vocabulary");
    }
    byte[] out = new byte[piece.length()];
    for (int i = 0; i < piece.length(); i++) {
      Integer b = byteOf.get(piece.charAt(i));
      if (b == null) {
        throw new EngineException("token " + id + " has a character outside the byte-level alphabet");
      }
      out[i] = (byte) (int) b;
    }
    return out;
  }

  /** Inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest 256+n. */
  static Map<Character, Integer> byteLevelDecodeTable() {
    Map<Character, Integer> table = new HashMap<>();
    int extra = 0;
    for (int b = 0; b < 256; b++) {
      boolean printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      table.put((char) (printable ? b : 256 + extra++), b);
    }
    return table;
  }
}
