package org.autoglm.engine;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/** One chat turn: a role and its parts (text, image, audio; media only in user turns). */
public final class Message {
  public enum Kind {
    TEXT,
    IMAGE,
    AUDIO
  }

  /** One part of a message; images and audio are placeholders here, their data travels apart. */
  public static final class Part {
    public final Kind kind;
    public final String text;

    private Part(Kind kind, String text) {
      this.kind = kind;
      this.text = text;
    }

    public static Part text(String text) {
      if (text == null) {
        throw new EngineException("a text part needs a string");
      }
      return new Part(Kind.TEXT, text);
    }

    public static Part image() {
      return new Part(Kind.IMAGE, null);
    }

    public static Part audio() {
      return new Part(Kind.AUDIO, null);
    }
  }

  public final String role;
  public final List<Part> parts;

  public Message(String role, List<Part> parts) {
    if (!role.equals("system") && !role.equals("user") && !role.equals("assistant")) {
      throw new EngineException(
          "unsupported message role '" + role + "' (expected system, user or assistant)");
    }
    for (Part p : parts) {
      if (p.kind != Kind.TEXT && !role.equals("user")) {
        throw new EngineException(
            p.kind.name().toLowerCase() + " parts are only allowed in user messages, not " + role);
      }
    }
    this.role = role;
    this.parts = Collections.unmodifiableList(new ArrayList<>(parts));
  }

  public static Message text(String role, String text) {
    return new Message(role, Collections.singletonList(Part.text(text)));
  }

  public int count(Kind kind) {
    int n = 0;
    for (Part p : parts) {
      if (p.kind == kind) {
        n++;
      }
    }
    return n;
  }
}
