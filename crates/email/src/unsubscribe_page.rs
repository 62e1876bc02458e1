//! The short pages of the unsubscribe link (`/u/{token}`, served by `tracking-api`), in pt-BR, es and en: the
//! question with its button (`GET`), the confirmation with an undo (`POST`), the confirmation of the undo, and
//! the pages for a link that is not valid or a moment of trouble. Server-rendered HTML without script or style;
//! the store's name is the only value inserted, escaped.
//!
//! Forms post to relative addresses, so the pages work under any public base (`TRACKING_PAGE_URL` may carry a
//! path): the question and the confirmation live at `…/u/{token}` (the button posts to the page's own address,
//! the undo to `{token}/undo`), the undo's confirmation at `…/u/{token}/undo` (its button posts to `../{token}`).

use crate::render::escape_attribute;
use tracking_domain::Locale;

/// Which page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribePage {
    /// `GET /u/{token}`: what the button does, and the button.
    Ask,
    /// After `POST /u/{token}`: unsubscribed, with an undo.
    Done,
    /// After `POST /u/{token}/undo`: subscribed again, with the button to unsubscribe again.
    Undone,
    /// A token that does not verify (404).
    NotFound,
    /// The database did not answer, or too many requests (503, 429).
    Unavailable,
}

struct Words {
    ask_title: &'static str,
    ask: &'static str,
    button: &'static str,
    done_title: &'static str,
    done: &'static str,
    undo: &'static str,
    undone_title: &'static str,
    undone: &'static str,
    not_found_title: &'static str,
    not_found: &'static str,
    unavailable_title: &'static str,
    unavailable: &'static str,
}

const PT_BR: Words = Words {
    ask_title: "Cancelar os emails de entrega?",
    ask: "Você deixará de receber neste endereço os emails de {store} sobre a entrega dos seus pedidos. A página de rastreamento continua funcionando.",
    button: "Cancelar os emails",
    done_title: "Pronto: você não receberá mais esses emails",
    done: "{store} não enviará mais emails sobre suas entregas para este endereço. A página de rastreamento continua funcionando.",
    undo: "Desfazer: voltar a receber os emails",
    undone_title: "Você voltará a receber os emails",
    undone: "{store} voltará a enviar para este endereço os emails sobre suas entregas.",
    not_found_title: "Link inválido",
    not_found: "Este link de cancelamento não é válido. Use o link do email mais recente.",
    unavailable_title: "Tente novamente em alguns minutos",
    unavailable: "Não conseguimos atender agora. Nada foi alterado.",
};

const ES: Words = Words {
    ask_title: "¿Dejar de recibir los correos de entrega?",
    ask: "Dejarás de recibir en esta dirección los correos de {store} sobre la entrega de tus pedidos. La página de seguimiento sigue funcionando.",
    button: "Dejar de recibir los correos",
    done_title: "Listo: no recibirás más estos correos",
    done: "{store} no enviará más correos sobre tus entregas a esta dirección. La página de seguimiento sigue funcionando.",
    undo: "Deshacer: volver a recibir los correos",
    undone_title: "Volverás a recibir los correos",
    undone: "{store} volverá a enviar a esta dirección los correos sobre tus entregas.",
    not_found_title: "Enlace no válido",
    not_found: "Este enlace para darse de baja no es válido. Usa el enlace del correo más reciente.",
    unavailable_title: "Inténtalo de nuevo en unos minutos",
    unavailable: "No podemos atenderte ahora. No se cambió nada.",
};

const EN: Words = Words {
    ask_title: "Stop the delivery emails?",
    ask: "You will no longer get {store}'s emails about your orders' deliveries at this address. The tracking page keeps working.",
    button: "Stop the emails",
    done_title: "Done: you will get no more of these emails",
    done: "{store} will send no more emails about your deliveries to this address. The tracking page keeps working.",
    undo: "Undo: get the emails again",
    undone_title: "You will get the emails again",
    undone: "{store} will send the emails about your deliveries to this address again.",
    not_found_title: "Link not valid",
    not_found: "This unsubscribe link is not valid. Use the link in the latest email.",
    unavailable_title: "Please try again in a few minutes",
    unavailable: "We cannot answer right now. Nothing was changed.",
};

fn words(locale: Locale) -> &'static Words {
    match locale {
        Locale::PtBr => &PT_BR,
        Locale::Es => &ES,
        Locale::En => &EN,
    }
}

/// The page `which` in `locale`, for the store named `store_name`; `token` is the link's token (base64url:
/// nothing to escape, but escaped all the same).
pub fn unsubscribe_page(
    which: UnsubscribePage,
    locale: Locale,
    store_name: &str,
    token: &str,
) -> String {
    let w = words(locale);
    let store = escape_attribute(store_name);
    let token = escape_attribute(token);
    let say = |text: &str| escape_attribute(text).replace("{store}", &store);
    let form = |action: Option<&str>, label: &str| {
        let action = action
            .map(|a| format!(" action=\"{a}\""))
            .unwrap_or_default();
        format!(
            "<form method=\"post\"{action}><button type=\"submit\">{}</button></form>",
            say(label)
        )
    };
    let (title, text, action) = match which {
        UnsubscribePage::Ask => (w.ask_title, w.ask, form(None, w.button)),
        UnsubscribePage::Done => (
            w.done_title,
            w.done,
            form(Some(&format!("{token}/undo")), w.undo),
        ),
        UnsubscribePage::Undone => (
            w.undone_title,
            w.undone,
            form(Some(&format!("../{token}")), w.button),
        ),
        UnsubscribePage::NotFound => (w.not_found_title, w.not_found, String::new()),
        UnsubscribePage::Unavailable => (w.unavailable_title, w.unavailable, String::new()),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{title}</title>\n</head>\n<body>\n<main>\n\
         <h1>{title}</h1>\n<p>{text}</p>\n{action}\n</main>\n</body>\n</html>\n",
        lang = locale.as_str(),
        title = say(title),
        text = say(text),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_page_speaks_the_locale_and_escapes_the_store() {
        for locale in Locale::ALL {
            for which in [
                UnsubscribePage::Ask,
                UnsubscribePage::Done,
                UnsubscribePage::Undone,
                UnsubscribePage::NotFound,
                UnsubscribePage::Unavailable,
            ] {
                let html = unsubscribe_page(which, locale, "Loja <b>&</b>", "TOKEN_1-x");
                assert!(html.contains(&format!("<html lang=\"{}\">", locale.as_str())));
                assert!(!html.contains("<b>"), "{html}");
                assert!(!html.contains("{store}"), "{html}");
                assert!(!html.contains("<script"), "{html}");
            }
        }
        let ask = unsubscribe_page(UnsubscribePage::Ask, Locale::En, "Loja A", "T");
        assert!(
            ask.contains("<form method=\"post\"><button type=\"submit\">Stop the emails</button>")
        );
        assert!(ask.contains("Loja A&#39;s emails"), "{ask}");
        let done = unsubscribe_page(UnsubscribePage::Done, Locale::PtBr, "Loja A", "T");
        assert!(done.contains("action=\"T/undo\""), "{done}");
        assert!(done.contains("Desfazer"), "{done}");
        let undone = unsubscribe_page(UnsubscribePage::Undone, Locale::Es, "Loja A", "T");
        assert!(undone.contains("action=\"../T\""), "{undone}");
        assert!(undone.contains("Volverás"), "{undone}");
    }
}
