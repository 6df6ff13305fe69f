/* libedit, loaded when the REPL starts on a terminal (libedit.c), not linked: every other run of
 * lasync maps none of it (libedit, libtinfo, libbsd, libmd), a fifth of what start-up had left
 * to do (docs/design.md, "Start-up"). lineedit.c includes this header instead of
 * <editline/readline.h> and reads as libedit's documentation has it: each name below is a macro
 * for the matching pointer of one table, typed from libedit's own declarations. Variables are
 * reached through their addresses, so `rl_point` reads and `rl_catch_signals = 0` writes
 * libedit's own. Nothing here may be used before lasync__edit_load has succeeded. */
#ifndef LASYNC_LIBEDIT_H
#define LASYNC_LIBEDIT_H

#include <editline/readline.h>

/* X(name) for each function and variable lineedit.c uses: adding one means adding its name here
 * and a #define below. */
/* clang-format off */
#define LASYNC__EDIT_SYMBOLS(X)                                                                  \
  X(rl_initialize) X(rl_callback_handler_install) X(rl_callback_handler_remove)                  \
  X(rl_callback_read_char) X(rl_completion_matches) X(rl_forced_update_display)                  \
  X(using_history) X(stifle_history) X(read_history) X(write_history) X(add_history)             \
  X(rl_readline_name) X(rl_instream) X(rl_outstream) X(rl_point)                                 \
  X(rl_basic_word_break_characters) X(rl_attempted_completion_function)                          \
  X(rl_attempted_completion_over) X(rl_completion_append_character) X(rl_catch_signals)         \
  X(rl_line_buffer) X(rl_end)
/* clang-format on */

#define LASYNC__EDIT_FIELD(name) __typeof__(name) *name;
typedef struct lasync__edit_api {
  LASYNC__EDIT_SYMBOLS(LASYNC__EDIT_FIELD)
} lasync__edit_api;
#undef LASYNC__EDIT_FIELD

extern lasync__edit_api lasync__edit;

/* Loads libedit once per process. 0 on success; -1 with *why set (a static string) when it
 * cannot: the REPL then reads plain lines, as it does from a pipe. */
int lasync__edit_load(const char **why);

/* libedit.c fills the table by these names: it must see them unexpanded. */
#ifndef LASYNC__EDIT_NO_MACROS
#define rl_initialize (*lasync__edit.rl_initialize)
#define rl_callback_handler_install (*lasync__edit.rl_callback_handler_install)
#define rl_callback_handler_remove (*lasync__edit.rl_callback_handler_remove)
#define rl_callback_read_char (*lasync__edit.rl_callback_read_char)
#define rl_completion_matches (*lasync__edit.rl_completion_matches)
#define rl_forced_update_display (*lasync__edit.rl_forced_update_display)
#define using_history (*lasync__edit.using_history)
#define stifle_history (*lasync__edit.stifle_history)
#define read_history (*lasync__edit.read_history)
#define write_history (*lasync__edit.write_history)
#define add_history (*lasync__edit.add_history)
#define rl_readline_name (*lasync__edit.rl_readline_name)
#define rl_instream (*lasync__edit.rl_instream)
#define rl_outstream (*lasync__edit.rl_outstream)
#define rl_point (*lasync__edit.rl_point)
#define rl_basic_word_break_characters (*lasync__edit.rl_basic_word_break_characters)
#define rl_attempted_completion_function (*lasync__edit.rl_attempted_completion_function)
#define rl_attempted_completion_over (*lasync__edit.rl_attempted_completion_over)
#define rl_completion_append_character (*lasync__edit.rl_completion_append_character)
#define rl_catch_signals (*lasync__edit.rl_catch_signals)
#define rl_line_buffer (*lasync__edit.rl_line_buffer)
#define rl_end (*lasync__edit.rl_end)
#endif

#endif
