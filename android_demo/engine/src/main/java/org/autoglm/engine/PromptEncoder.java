package org.autoglm.engine;

import java.util.ArrayList;
import java.util.List;

/**
 * Render, tokenize, expand placeholders and compute positions for one chat (runtime prompt.py
 * encode_chat): each &lt;|image|&gt; id becomes image_tokens copies (type 1), each &lt;|audio|&gt; id
 * audio_tokens copies (type 0: GLM-4.1V's M-RoPE has no audio modality).
 */
public final class PromptEncoder {
  private final BundleManifest manifest;
  private final Tokenizer tokenizer;

  public PromptEncoder(BundleManifest manifest, Tokenizer tokenizer) {
    this.manifest = manifest;
    this.tokenizer = tokenizer;
  }

  public PromptInputs encode(List<Message> messages, Boolean enableThinking) {
    int nImg = 0;
    int nAud = 0;
    for (Message m : messages) {
      nImg += m.count(Message.Kind.IMAGE);
      nAud += m.count(Message.Kind.AUDIO);
    }
    if (nAud > 0 && !manifest.hasAudio()) {
      throw new EngineException("this model has no audio tower; remove the recording");
    }
    String text = manifest.chatTemplate.render(messages, enableThinking, true);
    long[] ids = tokenizer.encode(text);
    long imageId = manifest.imageTokenId;
    long audioId = manifest.audioTokenId;
    // Placeholder ids must come only from media parts: typed "<|image|>" would desync the features.
    if (count(ids, imageId) != nImg) {
      throw new EngineException("message text contains the reserved token <|image|>");
    }
    if (manifest.hasAudio() && count(ids, audioId) != nAud) {
      throw new EngineException("message text contains the reserved token <|audio|>");
    }
    int perImage = manifest.image.numTokens();
    int perAudio = manifest.audioTokens;
    int total = ids.length + nImg * (perImage - 1) + nAud * (perAudio - 1);
    long[] expanded = new long[total];
    int[] types = new int[total];
    int k = 0;
    for (long t : ids) {
      int reps = t == imageId ? perImage : (manifest.hasAudio() && t == audioId ? perAudio : 1);
      int type = t == imageId ? Positions.IMAGE : Positions.TEXT;
      for (int r = 0; r < reps; r++) {
        expanded[k] = t;
        types[k++] = type;
      }
    }
    List<int[]> grids = new ArrayList<>();
    for (int i = 0; i < nImg; i++) {
      grids.add(manifest.image.gridThw());
    }
    Positions.Result pos = Positions.ropeIndex(types, grids, manifest.image.mergeSize);
    return new PromptInputs(text, ids, expanded, types, pos, nImg, nAud);
  }

  private static int count(long[] ids, long id) {
    int n = 0;
    for (long t : ids) {
      if (t == id) {
        n++;
      }
    }
    return n;
  }
}
