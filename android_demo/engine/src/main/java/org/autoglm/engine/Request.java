package org.autoglm.engine;

import java.util.ArrayList;
import java.util.List;

/** One user turn: text, an optional screenshot (ARGB), an optional recording (mono PCM). */
public final class Request {
  public String prompt = "";
  public String system;
  public int[] imageArgb;
  public int imageWidth;
  public int imageHeight;
  public float[] audioMono;
  public int audioSampleRate;
  public int maxNewTokens = 64;
  public SamplingConfig sampling = SamplingConfig.greedy();
  /** null: the template's default; false: pre-fill an empty think block. */
  public Boolean enableThinking;

  public Request withImage(int[] argb, int width, int height) {
    imageArgb = argb;
    imageWidth = width;
    imageHeight = height;
    return this;
  }

  public Request withAudio(float[] mono, int sampleRate) {
    audioMono = mono;
    audioSampleRate = sampleRate;
    return this;
  }

  /** [system], then one user message: image, audio, text (runtime Session.messages_for). */
  public List<Message> messages() {
    List<Message> out = new ArrayList<>();
    if (system != null && !system.isEmpty()) {
      out.add(Message.text("system", system));
    }
    List<Message.Part> parts = new ArrayList<>();
    if (imageArgb != null) {
      parts.add(Message.Part.image());
    }
    if (audioMono != null) {
      parts.add(Message.Part.audio());
    }
    parts.add(Message.Part.text(prompt));
    out.add(new Message("user", parts));
    return out;
  }
}
