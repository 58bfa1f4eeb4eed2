package org.autoglm.engine;

import java.util.List;

/**
 * The manifest's chat_template section rendered as runtime/autoglm_runtime/prompt.py does:
 * prefix, then per message the turn format with its parts, then the generation prompt (and the
 * empty think block when thinking is switched off).
 */
public final class ChatTemplate {
  public final String prefix;
  public final String turn;
  public final String generationPrompt;
  public final String imagePlaceholder;
  public final String audioPlaceholder;
  public final String thinkingOffSuffix;

  public ChatTemplate(
      String prefix,
      String turn,
      String generationPrompt,
      String imagePlaceholder,
      String audioPlaceholder,
      String thinkingOffSuffix) {
    if (!turn.contains("{role}") || !turn.contains("{content}")) {
      throw new EngineException("chat_template.turn must contain {role} and {content}: " + turn);
    }
    this.prefix = prefix;
    this.turn = turn;
    this.generationPrompt = generationPrompt;
    this.imagePlaceholder = imagePlaceholder;
    this.audioPlaceholder = audioPlaceholder;
    this.thinkingOffSuffix = thinkingOffSuffix;
  }

  /**
   * The prompt text. enableThinking null or true: the template's default (GLM-4.1V always thinks);
   * false: the generation prompt is followed by an empty think block.
   */
  public String render(List<Message> messages, Boolean enableThinking, boolean addGenerationPrompt) {
    StringBuilder out = new StringBuilder(prefix);
    for (Message m : messages) {
      // Literal replacement: message text may contain "{content}" or "$" and must stay as typed.
      out.append(turn.replace("{role}", m.role).replace("{content}", renderContent(m)));
    }
    if (addGenerationPrompt) {
      out.append(generationPrompt);
      if (Boolean.FALSE.equals(enableThinking)) {
        out.append(thinkingOffSuffix);
      }
    }
    return out.toString();
  }

  private String renderContent(Message m) {
    StringBuilder sb = new StringBuilder();
    for (Message.Part p : m.parts) {
      switch (p.kind) {
        case TEXT:
          sb.append(p.text);
          break;
        case IMAGE:
          sb.append(imagePlaceholder);
          break;
        case AUDIO:
          sb.append(audioPlaceholder);
          break;
      }
    }
    return sb.toString();
  }
}
