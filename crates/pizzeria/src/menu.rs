//! The menu: the pizzas a customer may order, their prices and what goes into them.
//!
//! The menu is static data shared by every service: the front desk prices an order with it,
//! inventory turns pizzas into ingredients with it. One ingredient, [`RARE_INGREDIENT`], is
//! the kind the kitchen runs out of, so that some orders fail and the compensations run.

/// A pizza on the menu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pizza {
    /// The name customers order by (lowercase).
    pub name: &'static str,
    /// The price in cents.
    pub price_cents: u64,
    /// One unit of each of these goes into the pizza.
    pub ingredients: &'static [&'static str],
}

/// The ingredient in short supply: only the tartufo needs it.
pub const RARE_INGREDIENT: &str = "truffle";

/// Every pizza the pizzeria makes.
pub const MENU: &[Pizza] = &[
    Pizza {
        name: "margherita",
        price_cents: 900,
        ingredients: &["dough", "tomato", "mozzarella", "basil"],
    },
    Pizza {
        name: "marinara",
        price_cents: 800,
        ingredients: &["dough", "tomato", "garlic", "oregano"],
    },
    Pizza {
        name: "funghi",
        price_cents: 1100,
        ingredients: &["dough", "tomato", "mozzarella", "mushrooms"],
    },
    Pizza {
        name: "diavola",
        price_cents: 1200,
        ingredients: &["dough", "tomato", "mozzarella", "salami", "chili"],
    },
    Pizza {
        name: "quattro-formaggi",
        price_cents: 1300,
        ingredients: &["dough", "mozzarella", "gorgonzola", "parmesan", "fontina"],
    },
    Pizza {
        name: "tartufo",
        price_cents: 2400,
        ingredients: &["dough", "mozzarella", "mushrooms", RARE_INGREDIENT],
    },
];

/// The pizza called `name`, if it is on the menu.
pub fn pizza(name: &str) -> Option<&'static Pizza> {
    MENU.iter().find(|p| p.name == name)
}

/// Every ingredient used by some pizza, each once, in menu order.
pub fn ingredients() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    for p in MENU {
        for i in p.ingredients {
            if !all.contains(i) {
                all.push(i);
            }
        }
    }
    all
}

/// The menu's pizza names, comma-separated, for error messages.
pub fn names() -> String {
    MENU.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tartufo_needs_the_rare_ingredient() {
        let users: Vec<_> = MENU
            .iter()
            .filter(|p| p.ingredients.contains(&RARE_INGREDIENT))
            .map(|p| p.name)
            .collect();
        assert_eq!(users, ["tartufo"]);
        assert!(pizza("margherita").is_some());
        assert!(pizza("hawaii").is_none());
        assert!(ingredients().contains(&"basil"));
    }
}
